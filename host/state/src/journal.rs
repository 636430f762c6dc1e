//! The journal: every state-changing request, durably appended before it is
//! executed and acknowledged.
//!
//! Each record is one line, `<crc32 hex> <json>\n`. Replaying the records
//! after the last checkpoint re-executes them deterministically (each record
//! carries its round and time). A final record that is incomplete or fails
//! its checksum is a torn write from a crash: it was never acknowledged, so
//! it is cut off with a warning. Damage anywhere else is an error.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use cellar_types::Principal;
use cellar_types::api::{Args, InstallMode, ReplyEncoding};
use serde::{Deserialize, Serialize};

/// Heights between the finalized batch that changes the consensus policy
/// and the height from which every replica runs the new one.
pub const CONSENSUS_POLICY_LAG: u64 = 20;

/// A state-changing request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Op {
    /// Create an empty canister; it gets the next free canister index.
    Create {
        /// Its controllers.
        controllers: Vec<Principal>,
    },
    /// Create a canister and install code in it, as one request: the
    /// install can only target the canister this request creates. When the
    /// install fails the canister is not created (its index stays used).
    CreateWithModule {
        /// Its controllers.
        controllers: Vec<Principal>,
        /// SHA-256 (hex) of the module, stored under `modules/`.
        module_hash: String,
        /// WAVE argument list for `init`.
        arg: Option<String>,
    },
    /// Install, reinstall or upgrade code.
    Install {
        /// The canister.
        id: Principal,
        /// How.
        mode: InstallMode,
        /// SHA-256 (hex) of the module, stored under `modules/`.
        module_hash: String,
        /// WAVE argument list for the hook.
        arg: Option<String>,
    },
    /// Install, reinstall or upgrade code assembled from the canister's
    /// chunk store; a successful install empties the store.
    InstallChunked {
        /// The canister.
        id: Principal,
        /// How.
        mode: InstallMode,
        /// SHA-256 (hex) of each chunk, in module order.
        chunk_hashes: Vec<String>,
        /// SHA-256 (hex) of the assembled module.
        module_hash: String,
        /// WAVE argument list for the hook.
        arg: Option<String>,
    },
    /// Add a chunk (stored under `modules/` by its hash before this record
    /// is journaled) to the canister's chunk store.
    UploadChunk {
        /// The canister.
        id: Principal,
        /// SHA-256 (hex) of the chunk.
        hash: String,
    },
    /// Empty the canister's chunk store.
    ClearChunks {
        /// The canister.
        id: Principal,
    },
    /// An update call.
    Call {
        /// The canister.
        id: Principal,
        /// The method.
        method: String,
        /// The arguments.
        args: Args,
    },
    /// Stop a canister.
    Stop {
        /// The canister.
        id: Principal,
    },
    /// Start a canister.
    Start {
        /// The canister.
        id: Principal,
    },
    /// Delete a canister.
    Delete {
        /// The canister.
        id: Principal,
    },
    /// Replace the controllers.
    SetControllers {
        /// The canister.
        id: Principal,
        /// The new controllers.
        controllers: Vec<Principal>,
    },
    /// Add cycles to a canister's balance (anyone may; on a local node
    /// cycles are minted).
    TopUp {
        /// The canister.
        id: Principal,
        /// Cycles to add.
        amount: u64,
    },
    /// Replace the scheduler policy from the next plan on (none: the
    /// built-in default).
    SetSchedulerPolicy {
        /// SHA-256 (hex) of the policy component, stored under `modules/`.
        module_hash: Option<String>,
    },
    /// Replica mode: replace the subnet's consensus policy with the
    /// component stored under `modules/`, from the height this request
    /// executes at plus [`CONSENSUS_POLICY_LAG`].
    SetConsensusPolicy {
        /// SHA-256 (hex) of the consensus-policy component.
        module_hash: String,
    },
    /// Set the share of every round's instructions guaranteed to the
    /// canister.
    SetComputeAllocation {
        /// The canister.
        id: Principal,
        /// Percent, 0 to 100; all canisters together at most 100.
        percent: u8,
    },
}

/// The signed request a journaled request came from: enough to refuse a
/// replay of it after a restart, until its ingress expiry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestTag {
    /// The request id ([`cellar_types::api::request_id`]).
    pub id: String,
    /// Its ingress expiry (nanoseconds since the Unix epoch).
    pub expiry: u64,
    /// How a call's reply is encoded in the ingress history.
    #[serde(default, skip_serializing_if = "is_wave")]
    pub encoding: ReplyEncoding,
}

fn is_wave(encoding: &ReplyEncoding) -> bool {
    *encoding == ReplyEncoding::Wave
}

/// A request as it arrived: who sent it and what it asks.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Ingress {
    /// The sender.
    pub caller: Principal,
    /// The request.
    pub op: Op,
    /// The HTTP request it came from (signed or not), when it came through
    /// the API with an ingress expiry: the round records the request's fate
    /// under this id in the ingress history (a replica sets it from the
    /// signed request every replica checks, never from what the sending
    /// replica claims).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<RequestTag>,
}

/// One journal record: a round's input batch, in the order it executes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// The round the batch executes in.
    pub round: u64,
    /// The round's time.
    pub time_nanos: u64,
    /// The requests inducted in this round (possibly none: a round may run
    /// only queued messages and timers).
    pub ingress: Vec<Ingress>,
}

/// How hard the journal tries to reach the disk before acknowledging.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// `fdatasync` every record: survives power loss.
    Sync,
    /// Write to the OS only: survives a crash of the node process, not of
    /// the machine (for tests and benchmarks).
    Process,
}

/// An open journal file.
pub struct Journal {
    file: File,
    path: PathBuf,
    durability: Durability,
    /// Bytes of whole records in the file.
    len: u64,
    /// Set when an append failed and its bytes could not be cut off, or
    /// its sync failed: what the file ends with is unknown, so nothing may
    /// follow it.
    broken: bool,
}

/// Encodes a record as one framed line.
fn frame(record: &Record) -> Vec<u8> {
    let json = serde_json::to_vec(record).expect("records serialize");
    let mut line = format!("{:08x} ", crc32fast::hash(&json)).into_bytes();
    line.extend_from_slice(&json);
    line.push(b'\n');
    line
}

impl Journal {
    /// Opens (creating) the journal at `path` for appending. A new file's
    /// directory entry is synced too (with [`Durability::Sync`]): records
    /// synced into a file whose name is lost are lost.
    pub fn open(path: &Path, durability: Durability) -> anyhow::Result<Self> {
        let created = !path.exists();
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        if created && durability == Durability::Sync {
            let dir = path.parent().unwrap_or(Path::new("."));
            File::open(dir)?.sync_all()?;
        }
        let len = file.metadata()?.len();
        Ok(Journal {
            file,
            path: path.to_path_buf(),
            durability,
            len,
            broken: false,
        })
    }

    /// Appends a record durably.
    ///
    /// When this fails the record counts as not written, and its bytes are
    /// cut off again: after half a record, the next one would read as
    /// damage before the end of the journal; after a whole one, replay
    /// would execute a round that never executed. When they cannot be cut
    /// off, or the sync failed (the kernel may have dropped the pages it
    /// could not write), the journal refuses every further append, and
    /// restarting the node recovers from what reached the disk.
    pub fn append(&mut self, record: &Record) -> anyhow::Result<()> {
        anyhow::ensure!(
            !self.broken,
            "the journal {} failed a write earlier; restart the node to recover",
            self.path.display()
        );
        let line = frame(record);
        let result = self.file.write_all(&line);
        let result = match result {
            Ok(()) if self.durability == Durability::Sync => {
                self.file.sync_data().inspect_err(|_| self.broken = true)
            }
            other => other,
        };
        if let Err(e) = result {
            if self.file.set_len(self.len).is_err() {
                self.broken = true;
            }
            anyhow::bail!("cannot append to the journal {}: {e}", self.path.display());
        }
        self.len += line.len() as u64;
        Ok(())
    }
}

/// Reads every record of a journal file. A torn or corrupt last line is cut
/// off (the file is truncated to the last good record); a bad line followed
/// by good ones is an error.
pub fn read_records(path: &Path) -> anyhow::Result<Vec<Record>> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let mut reader = BufReader::new(file);
    let mut records = Vec::new();
    let mut good_len: u64 = 0;
    let mut line = Vec::new();
    let mut bad: Option<String> = None;
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line)?;
        if n == 0 {
            break;
        }
        if let Some(problem) = bad.take() {
            anyhow::bail!(
                "journal {} is damaged before its end ({problem}); refusing to guess",
                path.display()
            );
        }
        match parse_line(&line) {
            Ok(record) => {
                records.push(record);
                good_len += n as u64;
            }
            Err(problem) => bad = Some(problem),
        }
    }
    if let Some(problem) = bad {
        tracing::warn!(
            path = %path.display(),
            "cutting off a torn journal record ({problem}); it was never acknowledged"
        );
        OpenOptions::new()
            .write(true)
            .open(path)?
            .set_len(good_len)?;
    }
    Ok(records)
}

fn parse_line(line: &[u8]) -> Result<Record, String> {
    let line = line.strip_suffix(b"\n").ok_or("record without line end")?;
    if line.len() < 10 || line[8] != b' ' {
        return Err("record without checksum".into());
    }
    let crc = std::str::from_utf8(&line[..8])
        .ok()
        .and_then(|s| u32::from_str_radix(s, 16).ok())
        .ok_or("unreadable checksum")?;
    let json = &line[9..];
    if crc32fast::hash(json) != crc {
        return Err("checksum mismatch".into());
    }
    serde_json::from_slice(json).map_err(|e| format!("undecodable record: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(round: u64) -> Record {
        Record {
            round,
            time_nanos: round * 10,
            ingress: vec![Ingress {
                caller: Principal::anonymous(),
                op: Op::Stop {
                    id: Principal::canister(round),
                },
                request: None,
            }],
        }
    }

    #[test]
    fn records_round_trip_and_torn_tail_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.log");
        let mut journal = Journal::open(&path, Durability::Process).unwrap();
        for round in 1..=3 {
            journal.append(&record(round)).unwrap();
        }
        drop(journal);
        assert_eq!(read_records(&path).unwrap().len(), 3);
        // A torn write: half a record at the end.
        let full = std::fs::read(&path).unwrap();
        let mut torn = full.clone();
        torn.extend_from_slice(&frame(&record(4))[..20]);
        std::fs::write(&path, &torn).unwrap();
        assert_eq!(
            read_records(&path).unwrap(),
            vec![record(1), record(2), record(3)]
        );
        assert_eq!(std::fs::read(&path).unwrap(), full);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_failed_append_closes_the_journal_when_it_cannot_be_undone() {
        // Every write to /dev/full fails (no space), and it cannot be truncated.
        let mut journal = Journal::open(Path::new("/dev/full"), Durability::Sync).unwrap();
        let first = journal.append(&record(1)).unwrap_err().to_string();
        assert!(first.contains("cannot append"), "{first}");
        let next = journal.append(&record(1)).unwrap_err().to_string();
        assert!(next.contains("restart the node"), "{next}");
    }

    #[test]
    fn damage_before_the_end_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.log");
        let mut bytes = frame(&record(1));
        bytes[12] ^= 1;
        bytes.extend_from_slice(&frame(&record(2)));
        std::fs::write(&path, &bytes).unwrap();
        assert!(read_records(&path).is_err());
    }
}
