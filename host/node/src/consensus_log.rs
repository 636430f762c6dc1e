//! A replica's consensus log: what it signed and which blocks it executed,
//! kept across restarts (`consensus.log` in the data directory).
//!
//! - [`Entry::Signed`]: a choice the replica's consensus signed
//!   ([`cellar_consensus::signed::Signed`]). Written and synced *before*
//!   anything that follows it is sent (one `fdatasync` per action list),
//!   so a restarted replica never signs a conflicting choice (a second
//!   block at a height, another block of a rank it supported, a
//!   notarization share after a finalization share).
//! - [`Entry::Executed`]: the block the replica executed at a height, and
//!   its state hash at catch-up heights. Not synced on its own (the
//!   journal is the durability point of execution); it rides along with
//!   the next sync. After a restart, consensus delivers heights the replica
//!   executed again: each must be the same block, and a catch-up package at
//!   an executed height must certify that block and state. Anything else is
//!   proof of a fork, and the replica stops loudly instead of adopting it
//!   (it logs `FORK` and exits with status 3).
//!
//! Records are length + CRC32 + postcard: `<u32 length LE> <u32 crc32 LE>
//! <postcard>`. A torn last record (its length runs past the end of the
//! file: a crash mid-append, before its sync, so nothing it covers was
//! sent) is cut off at open; a record whose bytes are all there but do not
//! check is damage, an error, and the log is refused.
//! Entries at or below the catch-up package the replica restarts from are
//! useless; [`ConsensusLog::compact`] rewrites the file without them
//! (write, sync, rename, sync the directory).

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::path::{Path, PathBuf};

use cellar_consensus::signed::Signed;
use serde::{Deserialize, Serialize};

/// The log's file name in the data directory.
pub const FILE_NAME: &str = "consensus.log";

/// Largest record accepted at open (records are tens of bytes).
const MAX_RECORD: u32 = 4096;

/// One record of the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Entry {
    /// A choice this replica's consensus signed.
    Signed(Signed),
    /// The block this replica executed at `height` (none when it replayed
    /// a peer's batch during catch-up: not known from a trusted source),
    /// and its state hash there when `height` is a catch-up height.
    Executed {
        /// The height.
        height: u64,
        /// The block's hash.
        block: Option<[u8; 32]>,
        /// The state hash reported to consensus at that height.
        state_hash: Option<[u8; 32]>,
    },
}

impl Entry {
    /// The height the entry is about.
    pub fn height(&self) -> u64 {
        match self {
            Entry::Signed(s) => s.height(),
            Entry::Executed { height, .. } => *height,
        }
    }
}

/// The open log.
pub struct ConsensusLog {
    file: File,
    path: PathBuf,
    /// The entries in the file, in order.
    entries: Vec<Entry>,
    /// Whether bytes were written since the last sync.
    dirty: bool,
}

impl ConsensusLog {
    /// Opens (or creates) the log in `dir`; returns it with the entries it
    /// holds. A torn last record is cut off.
    pub fn open(dir: &Path) -> io::Result<Self> {
        let path = dir.join(FILE_NAME);
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let (entries, good) = decode(&bytes).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: {e}", path.display()),
            )
        })?;
        if good < bytes.len() {
            tracing::warn!(
                cut = bytes.len() - good,
                "the consensus log ends with a torn record: cut off"
            );
            file.set_len(good as u64)?;
            file.sync_data()?;
        }
        file.seek(io::SeekFrom::End(0))?;
        Ok(ConsensusLog {
            file,
            path,
            entries,
            dirty: false,
        })
    }

    /// The entries, oldest first.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Appends entries (not yet durable: see [`ConsensusLog::sync`]).
    pub fn append(&mut self, entries: &[Entry]) -> io::Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::new();
        for e in entries {
            encode(e, &mut buf);
        }
        self.file.write_all(&buf)?;
        self.entries.extend_from_slice(entries);
        self.dirty = true;
        Ok(())
    }

    /// Makes everything appended durable.
    pub fn sync(&mut self) -> io::Result<()> {
        if self.dirty {
            self.file.sync_data()?;
            self.dirty = false;
        }
        Ok(())
    }

    /// Appends `entries` and makes them durable.
    pub fn append_durably(&mut self, entries: &[Entry]) -> io::Result<()> {
        self.append(entries)?;
        self.sync()
    }

    /// Drops the entries at or below `height` (the height of a catch-up
    /// package that is durably this replica's starting point), once more
    /// than `threshold` entries are held.
    pub fn compact(&mut self, height: u64, threshold: usize) -> io::Result<()> {
        if self.entries.len() <= threshold {
            return Ok(());
        }
        let kept: Vec<Entry> = self
            .entries
            .iter()
            .filter(|e| e.height() > height)
            .copied()
            .collect();
        let mut buf = Vec::new();
        for e in &kept {
            encode(e, &mut buf);
        }
        write_durably(&self.path, &buf)?;
        self.file = OpenOptions::new().append(true).open(&self.path)?;
        self.entries = kept;
        self.dirty = false;
        Ok(())
    }
}

/// Writes `bytes` to `path` durably: a temporary file, synced, renamed
/// over `path`, and the directory synced.
pub fn write_durably(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    sync_dir(path)
}

fn sync_dir(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => File::open(dir)?.sync_all(),
        _ => File::open(".")?.sync_all(),
    }
}

fn encode(entry: &Entry, out: &mut Vec<u8>) {
    let payload = postcard::to_stdvec(entry).expect("entries encode");
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
}

/// The entries of `bytes` and the length of its whole records.
fn decode(bytes: &[u8]) -> Result<(Vec<Entry>, usize), String> {
    let mut entries = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let Some(header) = bytes.get(at..at + 8) else {
            break; // a torn header
        };
        let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes"));
        let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
        if len > MAX_RECORD {
            return Err(format!("a record at byte {at} claims {len} bytes"));
        }
        let Some(payload) = bytes.get(at + 8..at + 8 + len as usize) else {
            break; // a torn payload
        };
        if crc32fast::hash(payload) != crc {
            return Err(format!("the record at byte {at} is damaged (checksum)"));
        }
        let entry = postcard::from_bytes(payload)
            .map_err(|e| format!("the record at byte {at} does not decode: {e}"))?;
        entries.push(entry);
        at += 8 + len as usize;
    }
    Ok((entries, at))
}

#[cfg(test)]
mod tests {
    use super::*;
    use cellar_consensus::Hash32;

    fn signed(h: u64) -> Entry {
        Entry::Signed(Signed::Notarization {
            height: h,
            rank: 1,
            block: Hash32([h as u8; 32]),
        })
    }

    fn executed(h: u64) -> Entry {
        Entry::Executed {
            height: h,
            block: Some([7; 32]),
            state_hash: h.is_multiple_of(10).then_some([9; 32]),
        }
    }

    #[test]
    fn entries_survive_reopening_and_a_torn_tail_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = ConsensusLog::open(dir.path()).unwrap();
        log.append_durably(&[signed(1), executed(1), signed(2)])
            .unwrap();
        drop(log);
        // A crash mid-append leaves part of a record.
        let path = dir.path().join(FILE_NAME);
        let mut bytes = std::fs::read(&path).unwrap();
        let whole = bytes.len();
        let mut more = Vec::new();
        encode(&executed(10), &mut more);
        bytes.extend_from_slice(&more[..more.len() - 3]);
        std::fs::write(&path, &bytes).unwrap();
        let mut log = ConsensusLog::open(dir.path()).unwrap();
        assert_eq!(log.entries(), &[signed(1), executed(1), signed(2)]);
        assert_eq!(std::fs::metadata(&path).unwrap().len() as usize, whole);
        // Appending goes on after the cut.
        log.append_durably(&[executed(10)]).unwrap();
        drop(log);
        let log = ConsensusLog::open(dir.path()).unwrap();
        assert_eq!(log.entries().len(), 4);
        assert_eq!(log.entries()[3], executed(10));
    }

    #[test]
    fn damage_before_the_end_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = ConsensusLog::open(dir.path()).unwrap();
        log.append_durably(&[signed(1), signed(2)]).unwrap();
        drop(log);
        let path = dir.path().join(FILE_NAME);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[9] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let err = ConsensusLog::open(dir.path()).err().expect("damage");
        assert!(err.to_string().contains("damaged"), "{err}");
    }

    #[test]
    fn compaction_keeps_only_entries_above_the_package() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = ConsensusLog::open(dir.path()).unwrap();
        let all: Vec<Entry> = (1..=30).flat_map(|h| [signed(h), executed(h)]).collect();
        log.append_durably(&all).unwrap();
        log.compact(20, 1000).unwrap();
        assert_eq!(log.entries().len(), 60, "under the threshold: kept");
        log.compact(20, 10).unwrap();
        assert_eq!(log.entries().len(), 20);
        assert!(log.entries().iter().all(|e| e.height() > 20));
        log.append_durably(&[signed(31)]).unwrap();
        drop(log);
        let log = ConsensusLog::open(dir.path()).unwrap();
        assert_eq!(log.entries().len(), 21);
        assert_eq!(log.entries()[20], signed(31));
    }
}
