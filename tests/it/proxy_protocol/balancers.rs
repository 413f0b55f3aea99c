//! Real balancers in front of shunt.
