//! The unit of linear memory that page maps, the page slab and the trackers
//! share: a 4 KiB page, its size and the type of its contents.

/// Bytes per page.
pub const PAGE_SIZE: usize = 4096;

/// The contents of one page.
pub type Page = [u8; PAGE_SIZE];
