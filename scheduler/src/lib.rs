//! The pod scheduler: watches unscheduled Pods, filters and scores Nodes, and binds.
//!
//! Not built yet: see issue 5.
