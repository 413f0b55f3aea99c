//! Reattaching a live call to a new backend connection (issue 25).
