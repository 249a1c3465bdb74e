//! The state journal: an append-only log of keyed records in a memory file
//! (`memfd`), which the holder keeps open beside the FUSE connection, so it
//! outlives the process that writes it exactly as the connection does (and
//! no longer: a reboot loses both).
//!
//! ```text
//! offset 0   "dfcstat1"  start (u64 LE): where the live records begin
//! start..    [len u32 LE][crc32 u32 LE][a `Record`, protobuf] ...
//! ```
//!
//! A record is written with one `pwrite` once the change it describes is
//! made and before the kernel hears of it, so a process killed at any point
//! leaves every name the kernel knows in the journal (at worst one torn
//! record at the end, which the next process drops). A fold keeps the last
//! record of each key (`records.rs`). When the log has grown past twice its
//! folded size (and 1 MiB), it is compacted in place: the fold is appended,
//! the header is pointed at it, and the space before it is punched out, so
//! memory stays proportional to the live state and a crash in between
//! leaves a log that folds to the same state.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::sync::Mutex;

use prost::Message;
use tracing::{info, warn};

use super::records::{Entry, Key, Record};

const MAGIC: &[u8; 8] = b"dfcstat1";
const HEADER: u64 = 16;
/// Compaction waits until the log has this much beyond twice its folded size.
const SLACK: u64 = 1 << 20;
/// No record is larger (a tree's manifest is the largest).
const MAX_RECORD: u32 = 300 << 20;

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("the state journal is not one (bad header)")]
    NotAJournal,
    #[error("state journal: {0}")]
    Io(#[from] std::io::Error),
}

pub struct Journal {
    file: File,
    cursor: Mutex<Cursor>,
}

struct Cursor {
    /// Where the live records begin.
    start: u64,
    /// Where the next record goes.
    end: u64,
    /// Bytes of the log after the last compaction (or the replay).
    folded: u64,
    /// A write failed: logged once.
    failed: bool,
}

impl Journal {
    /// A new, empty journal in a memory file.
    pub fn create() -> Result<Journal, JournalError> {
        let fd = nix::sys::memfd::memfd_create(
            c"dfcache-mount-state",
            nix::sys::memfd::MFdFlags::MFD_CLOEXEC,
        )
        .map_err(std::io::Error::from)?;
        let file = File::from(fd);
        write_header(&file, HEADER)?;
        Ok(Journal {
            file,
            cursor: Mutex::new(Cursor {
                start: HEADER,
                end: HEADER,
                folded: 0,
                failed: false,
            }),
        })
    }

    /// The journal in `fd` (handed over with the connection), and the live
    /// records it holds. A torn record at the end (its writer was killed
    /// mid-write) is dropped, and new records go after the last good one.
    pub fn open(fd: OwnedFd) -> Result<(Journal, Vec<Record>), JournalError> {
        let file = File::from(fd);
        let mut header = [0u8; HEADER as usize];
        file.read_exact_at(&mut header, 0)
            .map_err(|_| JournalError::NotAJournal)?;
        if &header[..8] != MAGIC {
            return Err(JournalError::NotAJournal);
        }
        let start = u64::from_le_bytes(header[8..].try_into().unwrap_or_default());
        let len = file.metadata()?.len();
        if start < HEADER || start > len {
            return Err(JournalError::NotAJournal);
        }
        let mut bytes = vec![0u8; (len - start) as usize];
        file.read_exact_at(&mut bytes, start)?;
        let (records, good) = decode(&bytes);
        if good < bytes.len() {
            warn!(
                dropped = bytes.len() - good,
                "the state journal ends with a torn record (its writer was killed mid-write): dropped"
            );
            file.set_len(start + good as u64)?;
        }
        let live = fold(records);
        let journal = Journal {
            file,
            cursor: Mutex::new(Cursor {
                start,
                end: start + good as u64,
                folded: good as u64,
                failed: false,
            }),
        };
        Ok((journal, live))
    }

    /// The memory file, to hand over.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    /// Appends `record`. A failure (no memory for the file) is logged once:
    /// the mount goes on serving, and a takeover later may not know some
    /// of its names.
    pub fn append(&self, record: &Record) {
        let bytes = encode(record);
        let mut cursor = self.cursor.lock().unwrap_or_else(|p| p.into_inner());
        match self.file.write_all_at(&bytes, cursor.end) {
            Ok(()) => cursor.end += bytes.len() as u64,
            Err(e) => {
                if !cursor.failed {
                    cursor.failed = true;
                    warn!(error = %e, "cannot write the state journal: a takeover of this mount may not know every file it serves");
                }
                return;
            }
        }
        if cursor.end - cursor.start > 2 * cursor.folded + SLACK {
            if let Err(e) = self.compact(&mut cursor) {
                warn!(error = %e, "cannot compact the state journal; it keeps growing");
                // Not again until it has grown as much once more.
                cursor.folded = cursor.end - cursor.start;
            }
        }
    }

    fn compact(&self, cursor: &mut Cursor) -> std::io::Result<()> {
        let mut bytes = vec![0u8; (cursor.end - cursor.start) as usize];
        self.file.read_exact_at(&mut bytes, cursor.start)?;
        let (records, _) = decode(&bytes);
        let before = bytes.len();
        let folded: Vec<u8> = fold(records).iter().flat_map(encode).collect();
        let new_start = cursor.end;
        self.file.write_all_at(&folded, new_start)?;
        write_header(&self.file, new_start)?;
        // Frees the pages of what came before (the header's page stays).
        let punch_end = new_start & !4095;
        if punch_end > 4096 {
            nix::fcntl::fallocate(
                self.file.as_fd(),
                nix::fcntl::FallocateFlags::FALLOC_FL_PUNCH_HOLE
                    | nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE,
                4096,
                (punch_end - 4096) as i64,
            )
            .map_err(std::io::Error::from)?;
        }
        cursor.start = new_start;
        cursor.end = new_start + folded.len() as u64;
        cursor.folded = folded.len() as u64;
        info!(before, after = folded.len(), "state journal compacted");
        Ok(())
    }

    /// Bytes of live log (for tests and the compaction rule).
    pub fn len(&self) -> u64 {
        let cursor = self.cursor.lock().unwrap_or_else(|p| p.into_inner());
        cursor.end - cursor.start
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn write_header(file: &File, start: u64) -> std::io::Result<()> {
    let mut header = [0u8; HEADER as usize];
    header[..8].copy_from_slice(MAGIC);
    header[8..].copy_from_slice(&start.to_le_bytes());
    file.write_all_at(&header, 0)
}

fn encode(record: &Record) -> Vec<u8> {
    let payload = record.encode_to_vec();
    let mut out = Vec::with_capacity(8 + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    out
}

/// The records in `bytes` up to the first one that is not whole and intact,
/// and how many bytes they take.
fn decode(bytes: &[u8]) -> (Vec<Record>, usize) {
    let mut records = Vec::new();
    let mut at = 0usize;
    while let Some(head) = bytes.get(at..at + 8) {
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
        let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        if len > MAX_RECORD {
            break;
        }
        let Some(payload) = bytes.get(at + 8..at + 8 + len as usize) else {
            break;
        };
        if crc32fast::hash(payload) != crc {
            break;
        }
        match Record::decode(payload) {
            Ok(record) => records.push(record),
            Err(_) => break,
        }
        at += 8 + len as usize;
    }
    (records, at)
}

/// The last record of each key, in key order (the connection first, then
/// inodes, then handles); removals and records of unknown kinds (from a
/// newer dfcache) are dropped.
pub fn fold(records: Vec<Record>) -> Vec<Record> {
    let mut live: BTreeMap<Key, Record> = BTreeMap::new();
    for record in records {
        let Some((key, removes)) = record.key() else {
            continue;
        };
        if removes {
            live.remove(&key);
            if let (Key::Node(ino), Some(Entry::NodeGone(_))) = (key, &record.entry) {
                live.remove(&Key::Outcome(ino));
            }
        } else {
            live.insert(key, record);
        }
    }
    live.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::takeover::records::*;
    use std::os::fd::AsFd;

    fn task(ino: u64) -> Record {
        Record::of(Entry::Task(TaskRecord {
            ino,
            id: format!("{ino:064x}"),
            content_length: ino * 10,
            piece_length: 4 << 20,
            created_ns: 1,
        }))
    }

    fn reopen(journal: &Journal) -> (Journal, Vec<Record>) {
        Journal::open(journal.fd().try_clone_to_owned().unwrap()).unwrap()
    }

    #[test]
    fn the_last_record_of_a_key_wins_and_removals_remove() {
        let journal = Journal::create().unwrap();
        journal.append(&task(20));
        journal.append(&task(21));
        let open = |fh| {
            Record::of(Entry::Open(OpenRecord {
                fh,
                ino: 20,
                passthrough: true,
                backing_id: 1,
            }))
        };
        journal.append(&open(5));
        journal.append(&open(6));
        journal.append(&Record::of(Entry::Closed(5)));
        journal.append(&Record::of(Entry::Outcome(OutcomeRecord {
            ino: 21,
            finished: None,
        })));
        journal.append(&Record::of(Entry::NodeGone(21)));
        let (_, live) = reopen(&journal);
        assert_eq!(live, vec![task(20), open(6)]);
    }

    #[test]
    fn a_torn_record_at_the_end_is_dropped_and_overwritten() {
        let journal = Journal::create().unwrap();
        journal.append(&task(20));
        let end = journal.len() + HEADER;
        // Half a record, as a writer killed mid-write leaves.
        let torn = encode(&task(21));
        journal
            .file
            .write_all_at(&torn[..torn.len() / 2], end)
            .unwrap();
        let (again, live) = reopen(&journal);
        assert_eq!(live, vec![task(20)]);
        again.append(&task(22));
        let (_, live) = reopen(&again);
        assert_eq!(live, vec![task(20), task(22)]);
    }

    #[test]
    fn compaction_keeps_the_state_and_frees_what_came_before() {
        let journal = Journal::create().unwrap();
        journal.append(&task(20));
        // Opens and closes of one handle, far past the compaction point.
        for fh in 0..40_000u64 {
            journal.append(&Record::of(Entry::Open(OpenRecord {
                fh,
                ino: 20,
                passthrough: false,
                backing_id: 0,
            })));
            journal.append(&Record::of(Entry::Closed(fh)));
        }
        assert!(
            journal.len() < 2 * SLACK,
            "never compacted: {}",
            journal.len()
        );
        let (_, live) = reopen(&journal);
        assert_eq!(live, vec![task(20)]);
        // The memory behind the file is the live part, not the history.
        let stat = nix::sys::stat::fstat(journal.file.as_fd()).unwrap();
        assert!(
            (stat.st_blocks as u64) * 512 < 4 * SLACK,
            "{} bytes allocated",
            stat.st_blocks * 512
        );
    }

    #[test]
    fn a_file_that_is_not_a_journal_is_refused() {
        let fd =
            nix::sys::memfd::memfd_create(c"x", nix::sys::memfd::MFdFlags::MFD_CLOEXEC).unwrap();
        let file = File::from(fd);
        file.write_all_at(b"something else entirely", 0).unwrap();
        assert!(matches!(
            Journal::open(OwnedFd::from(file)),
            Err(JournalError::NotAJournal)
        ));
    }
}
