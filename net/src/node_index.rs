//! How a node is named within its subnet: its index in the membership.

/// The index of a node in its subnet's membership.
pub type NodeIndex = u32;
