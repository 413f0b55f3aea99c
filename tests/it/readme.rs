//! README.md is an operator's document: a table of contents, then the
//! sections in the order an operator needs them (quick start, worked
//! example, deploy, configuration, security, troubleshooting, admin API,
//! metrics); the benchmark and the soak live in `docs/`, with the latest
//! numbers and no history.

fn read(path: &str) -> String {
    let full = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("read {}: {e}", full.display()))
}

/// GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens.
fn anchor(heading: &str) -> String {
    heading
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

#[test]
fn the_readme_has_contents_and_the_operator_order() {
    let readme = read("README.md");
    let sections: Vec<&str> = readme
        .lines()
        .filter_map(|l| l.strip_prefix("## "))
        .collect();
    let order = [
        "Contents",
        "Quick start",
        "A worked example",
        "Deploy",
        "Configuration",
        "Security",
        "Troubleshooting",
        "Admin API",
        "Metrics",
    ];
    let mut at = 0;
    for want in order {
        let found = sections[at..]
            .iter()
            .position(|s| s.starts_with(want))
            .unwrap_or_else(|| panic!("no `## {want}` after {:?}: {sections:?}", &sections[..at]));
        at += found + 1;
    }
    // The contents list links every section.
    let contents = readme
        .split("## Contents")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("a Contents section");
    for section in sections.iter().filter(|s| **s != "Contents") {
        let anchor = anchor(section);
        assert!(
            contents.contains(&format!("(#{anchor})")),
            "Contents does not link `## {section}` (#{anchor}):\n{contents}"
        );
    }
    // And every link in it leads to a heading.
    let anchors: Vec<String> = readme
        .lines()
        .filter_map(|l| l.strip_prefix("## ").or_else(|| l.strip_prefix("### ")))
        .map(anchor)
        .collect();
    for link in contents.split("(#").skip(1) {
        let target = link.split(')').next().unwrap_or_default();
        assert!(
            anchors.iter().any(|a| a == target),
            "Contents links #{target}, which no heading has"
        );
    }
    // Troubleshooting is not buried under benchmark history (the operator
    // sections before it grew with certificates, identity providers, load
    // balancers and reattach; history lives in docs/).
    let line = |title: &str| readme.lines().position(|l| l == title).unwrap();
    assert!(
        line("## Troubleshooting") < 1300,
        "Troubleshooting starts at line {}",
        line("## Troubleshooting")
    );
}

#[test]
fn performance_and_reliability_live_in_docs_without_history() {
    for doc in ["docs/performance.md", "docs/reliability.md"] {
        let text = read(doc);
        for history in [
            "issue 1",
            "issue 2",
            "issue 9",
            "this round",
            "the run before",
        ] {
            assert!(
                !text.to_lowercase().contains(history),
                "{doc} mentions {history:?}"
            );
        }
        assert!(
            text.contains("```sh"),
            "{doc} says how to reproduce its numbers"
        );
    }
    let readme = read("README.md").to_lowercase();
    for history in ["issue 12", "this round's run"] {
        assert!(!readme.contains(history), "README mentions {history:?}");
    }
    assert!(readme.contains("docs/performance.md") && readme.contains("docs/reliability.md"));
}
