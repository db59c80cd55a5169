//! Client ledgers: each process that reads or creates objects claims a client slot
//! recording the reader references it holds, so that when it dies they can be given
//! back; and the reclaiming of unsealed objects whose creator died.

use std::sync::atomic::Ordering;

use super::layout::{
    Record, FLAG_DELETE_PENDING, LEDGER_RECORDS, MAX_CLIENTS, NIL, STATE_CREATED, STATE_FREE,
};
use super::locked::Locked;

/// A process's state and start time, from one read of `/proc/<pid>/stat` (None when it cannot be read).
struct ProcStat {
    zombie: bool,
    start_time: u64,
}

fn proc_stat(pid: i32) -> Option<ProcStat> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count from the last ')'.
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace();
    let state = fields.next()?; // field 3
    let start_time = fields.nth(18).and_then(|t| t.parse().ok()).unwrap_or(0); // field 22
    Some(ProcStat { zombie: state == "Z", start_time })
}

/// The start time of a process (field 22 of `/proc/<pid>/stat`), or 0 when unknown.
pub(super) fn process_start_time(pid: i32) -> u64 {
    proc_stat(pid).map_or(0, |s| s.start_time)
}

/// Whether the process that claimed a client slot is still running (not merely its pid reused).
fn client_alive(pid: i32, start_time: u64) -> bool {
    match running_stat(pid) {
        None => false,
        Some(None) => start_time == 0, // no start time to compare: as before, only if none was recorded
        Some(Some(stat)) => start_time == 0 || stat.start_time == start_time,
    }
}

/// Whether `pid` is a running process. A zombie (killed, not yet reaped by its parent) is not:
/// a SIGKILLed worker stays one until its raylet waits for it, and its retry must be able to
/// reclaim what it left half-written in the meantime.
pub(super) fn pid_alive(pid: i32) -> bool {
    running_stat(pid).is_some()
}

/// None if `pid` is gone or a zombie; else its /proc stat if readable.
fn running_stat(pid: i32) -> Option<Option<ProcStat>> {
    // SAFETY: signal 0 performs only the existence/permission check.
    let rc = unsafe { libc::kill(pid, 0) };
    if rc != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH) {
        return None;
    }
    match proc_stat(pid) {
        Some(stat) if stat.zombie => None,
        stat => Some(stat),
    }
}

impl Locked<'_> {
    /// This process's client slot, claimed on first use; None when every slot is taken by a
    /// live process (its references then go untracked).
    pub(super) fn client_slot(&mut self) -> Option<u32> {
        let cached = self.store.client.load(Ordering::Relaxed);
        if cached != NIL {
            return Some(cached);
        }
        let (pid, start_time) = (self.store.pid, self.store.start_time);
        let mut free = None;
        for c in 0..MAX_CLIENTS as u32 {
            let cl = self.client(c);
            if cl.pid == pid && cl.start_time == start_time {
                free = Some(c); // another mapping of the store in this process: share its ledger
                break;
            }
            if cl.pid == 0 && free.is_none() {
                free = Some(c);
            }
        }
        if free.is_none() && self.reap_dead_clients_only() > 0 {
            free = (0..MAX_CLIENTS as u32).find(|&c| self.client(c).pid == 0);
        }
        let c = free?;
        let cl = self.client(c);
        if cl.pid != pid {
            cl.pid = pid;
            cl.start_time = start_time;
            cl.held = 0;
            cl.untracked = 0;
        }
        self.store.client.store(c, Ordering::Relaxed);
        Some(c)
    }

    /// Records one more reader reference of this process on entry `e`.
    pub(super) fn ledger_add(&mut self, e: u32, generation: u64) {
        let Some(c) = self.client_slot() else { return };
        let cl = self.client(c);
        let mask = LEDGER_RECORDS - 1;
        let mut r = (e as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32 & mask;
        loop {
            let rec = &mut cl.records[r as usize];
            if rec.count == 0 {
                if cl.held as u64 >= LEDGER_RECORDS * 3 / 4 {
                    cl.untracked += 1;
                    return;
                }
                *rec = Record { entry: e, count: 1, generation };
                cl.held += 1;
                return;
            }
            if rec.entry == e && rec.generation == generation {
                rec.count += 1;
                return;
            }
            r = (r + 1) & mask;
        }
    }

    /// Forgets one reader reference of this process on entry `e`.
    pub(super) fn ledger_remove(&mut self, e: u32, generation: u64) {
        let Some(c) = self.client_slot() else { return };
        let cl = self.client(c);
        let mask = LEDGER_RECORDS - 1;
        let home = |entry: u32| (entry as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32 & mask;
        let mut r = home(e);
        loop {
            let rec = cl.records[r as usize];
            if rec.count == 0 {
                cl.untracked = cl.untracked.saturating_sub(1); // it was one the full ledger skipped
                return;
            }
            if rec.entry == e && rec.generation == generation {
                break;
            }
            r = (r + 1) & mask;
        }
        cl.records[r as usize].count -= 1;
        if cl.records[r as usize].count > 0 {
            return;
        }
        // Backward-shift deletion, as in the hash index.
        cl.held -= 1;
        let (mut hole, mut j) = (r, r);
        loop {
            j = (j + 1) & mask;
            let rec = cl.records[j as usize];
            if rec.count == 0 {
                break;
            }
            let h = home(rec.entry);
            let stays = if hole <= j { hole < h && h <= j } else { hole < h || h <= j };
            if !stays {
                cl.records[hole as usize] = rec;
                hole = j;
            }
        }
        cl.records[hole as usize].count = 0;
    }

    /// Frees the client slots of dead processes, giving back their reader references;
    /// returns how many references were given back.
    pub(super) fn reap_dead_clients_only(&mut self) -> u64 {
        let mut given_back = 0;
        for c in 0..MAX_CLIENTS as u32 {
            let (pid, start_time) = {
                let cl = self.client(c);
                (cl.pid, cl.start_time)
            };
            if pid == 0 || client_alive(pid, start_time) {
                continue;
            }
            for r in 0..LEDGER_RECORDS as usize {
                let rec = self.client(c).records[r];
                if rec.count == 0 || rec.entry as u64 >= self.store.layout.max_objects {
                    continue;
                }
                let en = self.entry(rec.entry);
                if en.state == STATE_FREE || en.generation != rec.generation {
                    continue;
                }
                let n = rec.count.min(en.readers);
                en.readers -= n;
                given_back += n as u64;
                let unsealed_orphan = en.state == STATE_CREATED
                    && en.creator_pid == pid
                    && en.readers == 0
                    && en.flags & FLAG_DELETE_PENDING == 0;
                if en.readers == 0 && en.flags & FLAG_DELETE_PENDING != 0 {
                    self.free_entry(rec.entry);
                } else if unsealed_orphan {
                    // Its creator died before sealing it; known by the ledger, so a reused pid
                    // cannot pass for the creator as it can in `reclaim_dead`.
                    let id = self.entry(rec.entry).id().to_vec();
                    if let Some((slot, e)) = self.find(&id) {
                        self.remove(slot, e);
                        self.header().num_reclaimed += 1;
                    }
                }
            }
            let cl = self.client(c);
            cl.pid = 0;
            cl.start_time = 0;
            cl.held = 0;
            cl.untracked = 0;
            for rec in cl.records.iter_mut() {
                rec.count = 0;
            }
        }
        self.header().reaped_readers += given_back;
        given_back
    }

    pub(super) fn reap_dead_clients(&mut self) -> u64 {
        let given_back = self.reap_dead_clients_only();
        self.reclaim_dead();
        given_back
    }

    /// Frees unsealed objects whose creator process is gone; returns bytes freed.
    pub(super) fn reclaim_dead(&mut self) -> u64 {
        let mut freed = 0;
        for e in 0..self.store.layout.max_objects as u32 {
            let en = self.entry(e);
            if en.state == STATE_CREATED && en.flags & FLAG_DELETE_PENDING == 0 && !pid_alive(en.creator_pid)
            {
                en.readers = 0;
                let bytes = en.block_size;
                let id = en.id().to_vec();
                if let Some((slot, _)) = self.find(&id) {
                    self.remove(slot, e);
                    self.header().num_reclaimed += 1;
                    freed += bytes;
                }
            }
        }
        freed
    }
}
