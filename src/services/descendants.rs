//! Finding what a service forked, however it forked, so a stop leaves nothing behind; and how
//! much memory all of it holds, for the learned peak.
//!
//! Killing the service's process group misses a descendant that left it: a daemon-style double
//! fork with `setsid()` puts the grandchild in a new session and group, and once its parent exits
//! the kernel hands it to init, out of the service's tree. On Linux each service process is made
//! a *child subreaper* (`PR_SET_CHILD_SUBREAPER`, set before `exec` and kept across it), so such
//! an orphan is handed to the service instead and stays visible under it in `/proc`.
//!
//! Why a subreaper and not a cgroup: a cgroup needs a writable cgroup tree (root, or a delegated
//! systemd scope), which a desktop Electron app, and most containers, do not have; a subreaper
//! works unprivileged on every Linux since 3.4. Why the service and not the host: a subreaper
//! host would adopt the orphans itself, and neither Node (libuv) nor tokio waits for processes
//! they did not spawn, so they would pile up as zombies in the host. The cost: a service that
//! never waits for adopted children keeps their zombies until it exits (its own descendants only).
//!
//! [`ServiceTree`] walks the service's subtree while it runs and remembers each process group a
//! descendant leads outside the service's group, registering it with the host-death watchdog
//! too; the same walk measures the tree's resident memory for the learned peak. A stop signals
//! those groups with the service's, and kills them once the service is gone (by then they are
//! init's children).
//!
//! Cost: the walk goes down from the service through `/proc/<pid>/task/<tid>/children` (Linux
//! 3.5+), so it reads only the service's own processes, not every process on the machine (a
//! desktop has 300 to 600). It runs every [`SCAN_INTERVAL`] while the service loads and after its
//! tree changed, every [`IDLE_SCAN_INTERVAL`] once it is ready and still; the ready moment gets a
//! walk of its own. The whole process table is read only where it decides something: when a
//! group not seen before turns up (is another process in it?), at a stop, and where the kernel
//! lists no children (`CONFIG_PROC_CHILDREN` off).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use super::host_death::{HostDeathWatchdog, WatchedGroup};

/// How often a loading service's subtree is walked, and a ready one's after its tree changed
/// (or less, with a shorter `probeIntervalMs`).
pub const SCAN_INTERVAL: Duration = Duration::from_millis(250);

/// How often a ready service whose tree did not change is walked. Bounds how long an escaped
/// group formed by a ready service goes unknown to the host-death watchdog (which still finds
/// the escapee by the environment marker it inherited: see `host_death`).
pub const IDLE_SCAN_INTERVAL: Duration = Duration::from_secs(1);

/// Of a ready, still service's walks, every this many reads every thread's children list; the
/// others read each process's main thread's only. An orphan, an escapee whose parent exited
/// included, is handed to the subreaper's main thread, so those walks see it; a child of another
/// thread waits for the next full walk (5 s). A service with dozens of threads (an inference
/// service) costs dozens of reads a full walk.
pub const FULL_WALK_EVERY: u32 = 5;

/// A process as `/proc/<pid>/stat` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcEntry {
    pub pid: u32,
    pub ppid: u32,
    pub pgid: u32,
    pub zombie: bool,
    /// How many threads it has (each lists the children it forked).
    pub threads: u32,
    /// Resident memory, KiB.
    pub rss_kb: u64,
}

/// Where the facts about processes come from: `/proc` ([`Procfs`]), or a table in tests.
pub trait ProcSource {
    /// The children of every thread of `process` (`all_threads`), or of its main thread only:
    /// empty once it is gone; `None` where the kernel does not list children.
    fn children(&self, process: &ProcEntry, all_threads: bool) -> Option<Vec<u32>>;
    /// `pid`'s entry; `None` once it is gone.
    fn entry(&self, pid: u32) -> Option<ProcEntry>;
    /// Every process on the machine.
    fn table(&self) -> Vec<ProcEntry>;
}

/// The running system's `/proc` (Linux; elsewhere it shows no processes).
pub struct Procfs;

#[cfg(target_os = "linux")]
impl ProcSource for Procfs {
    fn children(&self, process: &ProcEntry, all_threads: bool) -> Option<Vec<u32>> {
        let pid = process.pid;
        let mut text = String::new();
        let mut children = Vec::new();
        let mut add = |list: &str| children.extend(list.split_whitespace().filter_map(|pid| pid.parse::<u32>().ok()));
        if process.threads <= 1 || !all_threads {
            // The main thread's list (with one thread, the process's): no listing of the task
            // folder first.
            let task = format!("/proc/{pid}/task/{pid}");
            return match read_small(&format!("{task}/children"), &mut text) {
                Ok(()) => {
                    add(&text);
                    Some(children)
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && !std::path::Path::new(&task).exists() => {
                    Some(children)
                }
                Err(_) => None,
            };
        }
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return Some(children) };
        for task in tasks.flatten() {
            match read_small(&format!("/proc/{pid}/task/{}/children", task.file_name().to_string_lossy()), &mut text) {
                Ok(()) => add(&text),
                // The thread (or the process) ended between the listing and the read.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && !task.path().exists() => {}
                Err(_) => return None,
            }
        }
        Some(children)
    }

    fn entry(&self, pid: u32) -> Option<ProcEntry> {
        read_stat(pid)
    }

    fn table(&self) -> Vec<ProcEntry> {
        let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
        dir.filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok()).filter_map(read_stat).collect()
    }
}

#[cfg(not(target_os = "linux"))]
impl ProcSource for Procfs {
    fn children(&self, _process: &ProcEntry, _all_threads: bool) -> Option<Vec<u32>> {
        Some(Vec::new())
    }
    fn entry(&self, _pid: u32) -> Option<ProcEntry> {
        None
    }
    fn table(&self) -> Vec<ProcEntry> {
        Vec::new()
    }
}

/// A small `/proc` file into `text` (replacing what it held): open, read to the end, close, with
/// none of the size look-ups `fs::read_to_string` makes first (a `/proc` file has no size).
#[cfg(target_os = "linux")]
fn read_small(path: &str, text: &mut String) -> std::io::Result<()> {
    use std::io::Read;
    text.clear();
    let mut file = std::fs::File::open(path)?;
    let mut buf = [0u8; 1024];
    loop {
        match file.read(&mut buf)? {
            0 => return Ok(()),
            n => text.push_str(&String::from_utf8_lossy(&buf[..n])),
        }
    }
}

/// `/proc/<pid>/stat`: the fields after the command name (which may hold spaces and parens).
#[cfg(target_os = "linux")]
fn read_stat(pid: u32) -> Option<ProcEntry> {
    let mut text = String::new();
    read_small(&format!("/proc/{pid}/stat"), &mut text).ok()?;
    // After ")": state(3) ppid(4) pgrp(5) ... num_threads(20) ... rss(24, pages).
    let fields: Vec<&str> = text[text.rfind(')')? + 2..].split(' ').collect();
    let state = *fields.first()?;
    let ppid = fields.get(1)?.parse().ok()?;
    let pgid = fields.get(2)?.parse().ok()?;
    let threads = fields.get(17)?.parse().ok()?;
    let rss_pages: u64 = fields.get(21)?.parse().ok()?;
    Some(ProcEntry { pid, ppid, pgid, zombie: state == "Z", threads, rss_kb: rss_pages * page_kb() })
}

#[cfg(target_os = "linux")]
fn page_kb() -> u64 {
    // SAFETY: sysconf only reads a system constant.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if page > 0 {
        page as u64 / 1024
    } else {
        4
    }
}

/// Every process now running below `root` (not `root` itself).
pub fn descendants(root: u32) -> Vec<ProcEntry> {
    walk(&Procfs, root, true).map(|(_, below)| below).unwrap_or_default()
}

/// `root` and every process below it, walked down the children lists (of every thread, or of
/// each main thread only): the reads grow with the subtree, not with the machine. Where the
/// kernel lists no children, through every process's parent link. `None` once `root` is gone.
pub fn walk(source: &impl ProcSource, root: u32, all_threads: bool) -> Option<(ProcEntry, Vec<ProcEntry>)> {
    let root_entry = source.entry(root)?;
    let mut found: Vec<ProcEntry> = Vec::new();
    let mut seen = BTreeSet::from([root]);
    let mut next = vec![root_entry];
    while let Some(process) = next.pop() {
        let Some(children) = source.children(&process, all_threads) else {
            return Some((root_entry, subtree(&source.table(), root)));
        };
        for child in children {
            // A cycle is impossible in a real tree; the guard keeps a torn read from looping.
            if seen.insert(child) {
                if let Some(entry) = source.entry(child) {
                    found.push(entry);
                    next.push(entry);
                }
            }
        }
    }
    Some((root_entry, found))
}

/// The subtree of `root` in a whole process table, through parent links.
fn subtree(table: &[ProcEntry], root: u32) -> Vec<ProcEntry> {
    let mut children: BTreeMap<u32, Vec<ProcEntry>> = BTreeMap::new();
    for entry in table {
        children.entry(entry.ppid).or_default().push(*entry);
    }
    let mut found = Vec::new();
    let mut seen = BTreeSet::from([root]);
    let mut next = vec![root];
    while let Some(pid) = next.pop() {
        for child in children.get(&pid).into_iter().flatten() {
            if seen.insert(child.pid) {
                found.push(*child);
                next.push(child.pid);
            }
        }
    }
    found
}

/// The resident memory (KiB) of `root` and of the live processes `below` it.
pub fn tree_rss_kb(root: &ProcEntry, below: &[ProcEntry]) -> u64 {
    root.rss_kb + below.iter().filter(|p| !p.zombie).map(|p| p.rss_kb).sum::<u64>()
}

/// When a service's tree is walked next, and how much of it is read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cadence {
    pub loaded: bool,
    /// The last walk found a process the one before had not.
    pub changed: bool,
    /// Walks of main threads only since the last full one.
    pub partial_walks: u32,
}

impl Cadence {
    /// Whether the next walk reads every thread's children list: while the service loads,
    /// right after its tree changed, and every [`FULL_WALK_EVERY`]th walk.
    pub fn full(&self) -> bool {
        !self.loaded || self.changed || self.partial_walks + 1 >= FULL_WALK_EVERY
    }

    /// A walk (`full` or not) found the tree `changed` or not.
    pub fn walked(&mut self, full: bool, changed: bool) {
        self.changed = changed;
        self.partial_walks = if full { 0 } else { self.partial_walks + 1 };
    }

    /// How long until the next walk: `loading_interval` while the service loads or right after
    /// its tree changed (a fork may be the first of several, an escape may be under way), else
    /// [`IDLE_SCAN_INTERVAL`].
    pub fn wait(&self, loading_interval: Duration) -> Duration {
        if self.loaded && !self.changed {
            IDLE_SCAN_INTERVAL.max(loading_interval)
        } else {
            loading_interval
        }
    }
}

/// How long to wait for the next multiple of `interval` since a shared epoch, `since_epoch` ago:
/// every service's walks then fall on the same instants, and the host wakes once for all of
/// them rather than once for each. In `(0, interval]`.
pub fn aligned_wait(since_epoch: Duration, interval: Duration) -> Duration {
    let step = interval.as_nanos().max(1);
    let into = since_epoch.as_nanos() % step;
    Duration::from_nanos((step - into) as u64)
}

/// A running service's tree: the process groups its descendants lead outside the service's own
/// (each watched by the host-death watchdog until it is killed), and the peak resident memory of
/// the whole tree. One walk serves both.
pub struct ServiceTree {
    service_pid: u32,
    /// Weak: the supervisor decides when the watchdog ends (its `close` reaps it).
    watchdog: Weak<HostDeathWatchdog>,
    /// The walk's interval while the service loads.
    loading_interval: Duration,
    state: Mutex<TreeState>,
    /// The service was reaped: its pid may be reused, so it is walked no more.
    ended: AtomicBool,
    peak_rss_kb: AtomicU64,
}

#[derive(Default)]
struct TreeState {
    groups: BTreeMap<u32, Option<WatchedGroup>>,
    /// Groups a process outside the tree was in at the last whole-table look: not ours to kill
    /// as a whole, and not looked up again at every walk.
    shared: BTreeSet<u32>,
    /// What the last full walk found and the partial ones since, to tell a changed tree from a
    /// still one.
    pids: BTreeSet<u32>,
    cadence: Cadence,
}

impl ServiceTree {
    /// The tree below `service_pid`, walked every `loading_interval` while it loads.
    pub fn new(service_pid: u32, watchdog: Option<&Arc<HostDeathWatchdog>>, loading_interval: Duration) -> Arc<Self> {
        let watchdog = watchdog.map_or_else(Weak::new, Arc::downgrade);
        Arc::new(Self {
            service_pid,
            watchdog,
            loading_interval,
            state: Mutex::new(TreeState::default()),
            ended: AtomicBool::new(false),
            peak_rss_kb: AtomicU64::new(0),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, TreeState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One walk of `/proc`, as much of it as the cadence says; returns how long to wait until
    /// the next.
    pub fn tick(&self) -> Duration {
        self.tick_in(&Procfs, false)
    }

    /// One walk (of every thread's children list when `full` or when the cadence says): raises
    /// the peak memory, remembers new escaped groups, and says how long to wait until the next.
    pub fn tick_in(&self, source: &impl ProcSource, full: bool) -> Duration {
        if self.ended.load(Ordering::Relaxed) {
            return IDLE_SCAN_INTERVAL;
        }
        let full = full || self.state().cadence.full();
        let found = match walk(source, self.service_pid, full) {
            Some((root, found)) => {
                self.peak_rss_kb.fetch_max(tree_rss_kb(&root, &found), Ordering::Relaxed);
                found
            }
            None => Vec::new(),
        };
        let mut state = self.state();
        let pids: BTreeSet<u32> = found.iter().map(|p| p.pid).collect();
        // A partial walk misses other threads' children: only a process not seen before counts.
        let changed = if full { pids != state.pids } else { !pids.is_subset(&state.pids) };
        if full {
            state.pids = pids;
        } else {
            state.pids.extend(pids);
        }
        state.cadence.walked(full, changed);
        let unknown = found.iter().any(|p| {
            !p.zombie
                && p.pgid != self.service_pid
                && !state.groups.contains_key(&p.pgid)
                && !state.shared.contains(&p.pgid)
        });
        if unknown {
            // Is anyone outside the tree in the new group? Only the whole table says. Whatever
            // forked since the walk is counted as ours too, not as an outsider.
            let table = source.table();
            let mut ours = found;
            let walked: BTreeSet<u32> = ours.iter().map(|p| p.pid).collect();
            ours.extend(subtree(&table, self.service_pid).into_iter().filter(|p| !walked.contains(&p.pid)));
            self.classify(&mut state, &table, &ours);
        }
        state.cadence.wait(self.loading_interval)
    }

    /// Remembers the groups the live processes `found` in the tree lead outside the service's
    /// group; returns those in a group a process outside the tree is in too (they can only be
    /// signalled one by one).
    fn classify(&self, state: &mut TreeState, table: &[ProcEntry], found: &[ProcEntry]) -> Vec<u32> {
        let ours: BTreeSet<u32> = found.iter().map(|p| p.pid).chain([self.service_pid]).collect();
        // A group any other process is in (the host's, say: a descendant that never left the
        // host's session may join it) is not ours to kill as a whole.
        let shared: BTreeSet<u32> = table.iter().filter(|p| !ours.contains(&p.pid)).map(|p| p.pgid).collect();
        state.shared.clear();
        let mut strays = Vec::new();
        for p in found.iter().filter(|p| !p.zombie && p.pgid != self.service_pid) {
            if shared.contains(&p.pgid) {
                strays.push(p.pid);
                state.shared.insert(p.pgid);
            } else {
                state.groups.entry(p.pgid).or_insert_with(|| self.watchdog.upgrade().map(|w| w.watch(p.pgid)));
            }
        }
        strays
    }

    /// The service is ready: its tree is walked less often from now on, unless it changes.
    pub fn loaded(&self) {
        self.state().cadence.loaded = true;
    }

    /// The service was reaped: its pid is no longer its own.
    pub fn ended(&self) {
        self.ended.store(true, Ordering::Relaxed);
    }

    /// The highest resident memory of the whole tree so far, in MB (one more walk first, while
    /// the tree may still be there); `None` before any was seen.
    pub fn peak_rss_mb(&self) -> Option<u64> {
        self.tick_in(&Procfs, true);
        Some(self.peak_rss_kb.load(Ordering::Relaxed) / 1024).filter(|&mb| mb > 0)
    }

    /// The escaped groups known so far.
    #[cfg(test)]
    pub fn escaped_groups(&self) -> Vec<u32> {
        self.state().groups.keys().copied().collect()
    }

    /// Reads the whole process table, remembers new escaped groups, and returns the live
    /// descendants that are in neither the service's group nor a group of their own. For a stop:
    /// exact whatever the periodic walks saw.
    pub fn scan(&self) -> Vec<u32> {
        self.scan_in(&Procfs)
    }

    pub fn scan_in(&self, source: &impl ProcSource) -> Vec<u32> {
        let table = source.table();
        let found = subtree(&table, self.service_pid);
        let mut state = self.state();
        self.classify(&mut state, &table, &found)
    }

    /// Sends `signal` to every escaped group, and to `strays`.
    #[cfg(unix)]
    pub fn signal(&self, signal: libc::c_int, strays: &[u32]) {
        let state = self.state();
        for pgid in state.groups.keys() {
            // SAFETY: only sends a signal; ESRCH (group gone) is fine.
            unsafe { libc::killpg(*pgid as libc::pid_t, signal) };
        }
        for pid in strays {
            unsafe { libc::kill(*pid as libc::pid_t, signal) };
        }
    }

    /// SIGKILLs every escaped group and every other process left in the service's subtree
    /// outside its own group, rounds after round until none is left (a fork racing the kill is
    /// caught by the next round). Call it only while the service is not reaped: its pid must
    /// still be its own.
    #[cfg(unix)]
    pub fn kill_tree(&self) {
        for _ in 0..20 {
            let strays = self.scan();
            self.signal(libc::SIGKILL, &strays);
            let left = descendants(self.service_pid).iter().any(|p| !p.zombie && p.pgid != self.service_pid);
            if !left {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// SIGKILLs the escaped groups found so far (the service may be gone: nothing is scanned),
    /// and lets the watchdog forget them.
    #[cfg(unix)]
    pub fn kill_known(&self) {
        self.signal(libc::SIGKILL, &[]);
        self.state().groups.clear();
    }

    #[cfg(not(unix))]
    pub fn kill_tree(&self) {}

    #[cfg(not(unix))]
    pub fn kill_known(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// A process table in memory that counts what is read from it.
    #[derive(Default)]
    struct FakeProcs {
        procs: Mutex<BTreeMap<u32, (ProcEntry, u64)>>,
        no_children_lists: bool,
        /// Pids listed under a thread of their parent other than its main one.
        other_thread_children: Mutex<BTreeSet<u32>>,
        /// Pids whose own files were read (children, stat, statm).
        read: Mutex<BTreeSet<u32>>,
        tables: AtomicUsize,
    }

    impl FakeProcs {
        fn add(&self, pid: u32, ppid: u32, pgid: u32, rss_kb: u64) {
            let entry = ProcEntry { pid, ppid, pgid, zombie: false, threads: 1, rss_kb };
            self.procs.lock().unwrap().insert(pid, (entry, rss_kb));
        }
        fn remove(&self, pid: u32) {
            self.procs.lock().unwrap().remove(&pid);
        }
        /// `pid`'s parent exits: the kernel hands it to `reaper`.
        fn reparent(&self, pid: u32, reaper: u32) {
            self.procs.lock().unwrap().get_mut(&pid).unwrap().0.ppid = reaper;
        }
        fn set_rss(&self, pid: u32, kb: u64) {
            self.procs.lock().unwrap().get_mut(&pid).unwrap().0.rss_kb = kb;
        }
        /// A machine: init, the host (group 50) and `others` unrelated processes.
        fn machine(others: u32) -> Self {
            let procs = Self::default();
            procs.add(1, 0, 1, 10_000);
            procs.add(50, 1, 50, 100_000);
            for pid in 1_000..1_000 + others {
                procs.add(pid, 1, pid, 5_000);
            }
            procs
        }
        fn take_reads(&self) -> (BTreeSet<u32>, usize) {
            (std::mem::take(&mut *self.read.lock().unwrap()), self.tables.swap(0, Ordering::Relaxed))
        }
    }

    impl ProcSource for FakeProcs {
        fn children(&self, process: &ProcEntry, all_threads: bool) -> Option<Vec<u32>> {
            if self.no_children_lists {
                return None;
            }
            let pid = process.pid;
            self.read.lock().unwrap().insert(pid);
            let elsewhere = self.other_thread_children.lock().unwrap();
            let procs = self.procs.lock().unwrap();
            let below = procs.values().filter(|(p, _)| p.ppid == pid);
            Some(below.filter(|(p, _)| all_threads || !elsewhere.contains(&p.pid)).map(|(p, _)| p.pid).collect())
        }
        fn entry(&self, pid: u32) -> Option<ProcEntry> {
            self.read.lock().unwrap().insert(pid);
            self.procs.lock().unwrap().get(&pid).map(|(p, _)| *p)
        }
        fn table(&self) -> Vec<ProcEntry> {
            self.tables.fetch_add(1, Ordering::Relaxed);
            self.procs.lock().unwrap().values().map(|(p, _)| *p).collect()
        }
    }

    const LOADING: Duration = Duration::from_millis(250);

    /// Service 100 (a child of the host, its own group 100) with a worker 101 in its group.
    fn service_on(machine: FakeProcs) -> (FakeProcs, Arc<ServiceTree>) {
        machine.add(100, 50, 100, 200_000);
        machine.add(101, 100, 100, 300_000);
        (machine, ServiceTree::new(100, None, LOADING))
    }

    /// 102 calls setsid() (group 102) and forks 103, then exits: 103 goes to the subreaper.
    fn double_fork_with_setsid(procs: &FakeProcs) {
        procs.add(102, 100, 102, 1_000);
        procs.add(103, 102, 102, 50_000);
        procs.remove(102);
        procs.reparent(103, 100);
    }

    #[test]
    fn a_double_forked_setsid_escapee_is_found_under_the_subreaper_and_its_group_kept() {
        let (procs, tree) = service_on(FakeProcs::machine(20));
        tree.tick_in(&procs, false);
        assert!(tree.escaped_groups().is_empty());
        double_fork_with_setsid(&procs);
        tree.tick_in(&procs, false);
        assert_eq!(tree.escaped_groups(), [102], "the escapee's group, though its leader is gone");
        // It stays known after the escapee's group is looked at no more.
        tree.tick_in(&procs, false);
        assert_eq!(tree.escaped_groups(), [102]);
        // And a stop's whole-table scan finds it too, with no stray to signal one by one.
        assert!(tree.scan_in(&procs).is_empty());
    }

    #[test]
    fn a_group_a_process_outside_the_tree_is_in_is_left_to_single_signals() {
        let (procs, tree) = service_on(FakeProcs::machine(20));
        // 104 joined the host's group 50.
        procs.add(104, 100, 50, 1_000);
        tree.tick_in(&procs, false);
        assert!(tree.escaped_groups().is_empty(), "the host's group is not ours to kill");
        assert_eq!(tree.scan_in(&procs), [104]);
    }

    #[test]
    fn a_still_tree_is_walked_without_reading_the_rest_of_the_machine() {
        let (procs, tree) = service_on(FakeProcs::machine(500));
        tree.tick_in(&procs, false);
        let (read, tables) = procs.take_reads();
        assert_eq!((read, tables), (BTreeSet::from([100, 101]), 0));
        // A new group: one look at the whole table to tell whether anyone else is in it.
        double_fork_with_setsid(&procs);
        tree.tick_in(&procs, false);
        let (read, tables) = procs.take_reads();
        assert_eq!((read, tables), (BTreeSet::from([100, 101, 103]), 1));
        // Known from then on: the tree's own files only, however many processes the machine has.
        for _ in 0..10 {
            tree.tick_in(&procs, false);
        }
        let (read, tables) = procs.take_reads();
        assert_eq!((read, tables), (BTreeSet::from([100, 101, 103]), 0));
    }

    #[test]
    fn the_peak_covers_every_process_of_the_tree_and_keeps_a_spike() {
        let (procs, tree) = service_on(FakeProcs::machine(20));
        procs.add(105, 101, 100, 400_000); // a grandchild
        tree.tick_in(&procs, false);
        // 200 + 300 + 400 MB: the grandchild counts.
        assert_eq!(tree.peak_rss_kb.load(Ordering::Relaxed), 900_000);
        // A spike while loading, then the grandchild frees it and an escapee appears.
        procs.set_rss(105, 1_400_000);
        tree.tick_in(&procs, false);
        procs.set_rss(105, 10_000);
        double_fork_with_setsid(&procs);
        tree.tick_in(&procs, false);
        assert_eq!(tree.peak_rss_kb.load(Ordering::Relaxed), 1_900_000);
        // Zombies hold no memory of their own that counts.
        procs.procs.lock().unwrap().get_mut(&103).unwrap().0.zombie = true;
        let (root, below) = walk(&procs, 100, true).unwrap();
        assert_eq!(tree_rss_kb(&root, &below), 510_000);
        assert_eq!(walk(&procs, 99, true), None, "a gone root has no tree");
    }

    #[test]
    fn walks_are_fast_and_full_while_loading_or_changing_slow_and_mostly_partial_once_still() {
        let loading = Cadence::default();
        assert!(loading.full());
        assert_eq!(loading.wait(LOADING), LOADING);
        let mut ready = Cadence { loaded: true, ..Cadence::default() };
        assert_eq!(ready.wait(LOADING), IDLE_SCAN_INTERVAL);
        // A probe interval longer than the idle one is never made shorter.
        assert_eq!(ready.wait(Duration::from_secs(5)), Duration::from_secs(5));
        let fulls: Vec<bool> = (0..2 * FULL_WALK_EVERY)
            .map(|_| {
                let full = ready.full();
                ready.walked(full, false);
                full
            })
            .collect();
        assert_eq!(fulls.iter().filter(|&&f| f).count(), 2, "one full walk in {FULL_WALK_EVERY}: {fulls:?}");
        ready.walked(false, true);
        assert!(ready.full(), "right after a change");
        assert_eq!(ready.wait(LOADING), LOADING);

        let (procs, tree) = service_on(FakeProcs::machine(20));
        assert_eq!(tree.tick_in(&procs, false), LOADING, "loading");
        tree.loaded();
        assert_eq!(tree.tick_in(&procs, false), IDLE_SCAN_INTERVAL, "ready, same tree");
        double_fork_with_setsid(&procs);
        assert_eq!(tree.tick_in(&procs, false), LOADING, "ready, the tree changed");
        assert_eq!(tree.tick_in(&procs, false), IDLE_SCAN_INTERVAL, "still again");
    }

    #[test]
    fn once_still_an_orphan_is_seen_at_the_next_walk_another_threads_child_at_the_next_full_one() {
        let (procs, tree) = service_on(FakeProcs::machine(20));
        tree.tick_in(&procs, false);
        tree.loaded();
        tree.tick_in(&procs, false);
        // 106 calls setsid() but its parent, a second thread of the service, stays.
        procs.add(106, 100, 106, 1_000);
        procs.other_thread_children.lock().unwrap().insert(106);
        let mut walks = 0;
        while !tree.escaped_groups().contains(&106) {
            walks += 1;
            assert!(walks <= FULL_WALK_EVERY, "not found in {FULL_WALK_EVERY} walks");
            tree.tick_in(&procs, false);
        }
        // The double fork's orphan is handed to the main thread: the very next walk has it.
        for _ in 0..3 {
            tree.tick_in(&procs, false);
        }
        assert!(!tree.state().cadence.full(), "a partial walk comes next");
        double_fork_with_setsid(&procs);
        tree.tick_in(&procs, false);
        assert_eq!(tree.escaped_groups(), [102, 106]);
    }

    #[test]
    fn waits_end_on_a_shared_grid() {
        let second = Duration::from_secs(1);
        assert_eq!(aligned_wait(Duration::from_millis(10_300), second), Duration::from_millis(700));
        assert_eq!(aligned_wait(Duration::from_millis(10_000), second), second);
        // Two services a third of a second apart wake at the same moment.
        let a = Duration::from_millis(4_100);
        let b = Duration::from_millis(4_433);
        assert_eq!(a + aligned_wait(a, second), b + aligned_wait(b, second));
        assert_eq!(aligned_wait(a, Duration::ZERO), Duration::from_nanos(1));
    }

    #[test]
    fn without_children_lists_the_whole_table_is_walked() {
        let procs = FakeProcs { no_children_lists: true, ..FakeProcs::machine(20) };
        procs.add(100, 50, 100, 200_000);
        procs.add(101, 100, 100, 300_000);
        procs.add(105, 101, 100, 400_000);
        let mut found: Vec<u32> = walk(&procs, 100, true).unwrap().1.iter().map(|p| p.pid).collect();
        found.sort();
        assert_eq!(found, [101, 105]);
        assert_eq!(procs.take_reads().1, 1);
    }

    #[test]
    fn a_reaped_service_is_walked_no_more() {
        let (procs, tree) = service_on(FakeProcs::machine(20));
        tree.ended();
        // Its pid reused by an unrelated process with an escaped-looking child.
        double_fork_with_setsid(&procs);
        tree.tick_in(&procs, false);
        assert!(tree.escaped_groups().is_empty());
        assert_eq!(procs.take_reads(), (BTreeSet::new(), 0));
    }

    #[cfg(target_os = "linux")]
    mod linux {
        use super::*;
        use std::io::BufRead;
        use std::os::unix::process::CommandExt;
        use std::process::{Command, Stdio};

        fn state(pid: u32) -> Option<char> {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            stat.rsplit(')').next()?.trim_start().chars().next()
        }

        #[test]
        fn finds_the_subtree_of_this_process() {
            let mut child = Command::new("sh").args(["-c", "sleep 30 & wait"]).spawn().unwrap();
            std::thread::sleep(Duration::from_millis(200));
            let below = descendants(std::process::id());
            let sh = below.iter().find(|p| p.pid == child.id()).expect("the child is a descendant");
            assert!(below.iter().any(|p| p.ppid == sh.pid), "the grandchild too: {below:?}");
            child.kill().unwrap();
            child.wait().unwrap();
        }

        #[test]
        fn a_child_forked_by_another_thread_is_found() {
            // Python forks `sleep` from a second thread, which lives on: the child is listed
            // under that thread, not the main one.
            let script = "import subprocess,threading,time\ndef fork():\n    print(subprocess.Popen(['sleep','30']).pid, flush=True)\n    time.sleep(30)\nthreading.Thread(target=fork, daemon=True).start()\ntime.sleep(30)";
            let mut python = Command::new("python3").args(["-c", script]).stdout(Stdio::piped()).spawn().unwrap();
            let mut line = String::new();
            std::io::BufReader::new(python.stdout.take().unwrap()).read_line(&mut line).unwrap();
            let sleeper: u32 = line.trim().parse().unwrap();
            let below = descendants(python.id());
            assert!(below.iter().any(|p| p.pid == sleeper), "{sleeper} below {}: {below:?}", python.id());
            // SAFETY: only signals the sleep this test started.
            unsafe { libc::kill(sleeper as libc::pid_t, libc::SIGKILL) };
            python.kill().unwrap();
            python.wait().unwrap();
        }

        #[test]
        fn an_escapee_forked_from_another_thread_is_handed_to_the_main_thread() {
            // A second thread double-forks with setsid() in between and lives on; the orphan goes
            // to the subreaper's main thread, so a walk of main threads only finds it.
            let script = "import os,threading,time\ndef escape():\n    r,w=os.pipe()\n    if os.fork()==0:\n        os.setsid()\n        if os.fork()==0:\n            os.write(w,(str(os.getpid())+'\\n').encode()); time.sleep(30); os._exit(0)\n        os._exit(0)\n    os.wait()\n    print(os.read(r,64).decode().strip(), flush=True)\n    time.sleep(30)\nthreading.Thread(target=escape, daemon=True).start()\ntime.sleep(30)";
            let mut command = Command::new("python3");
            command.args(["-W", "ignore", "-c", script]).stdout(Stdio::piped());
            // SAFETY: prctl only, as the supervisor's own spawn does.
            unsafe {
                command.pre_exec(|| {
                    libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong);
                    Ok(())
                });
            }
            let mut service = command.spawn().unwrap();
            let mut line = String::new();
            std::io::BufReader::new(service.stdout.take().unwrap()).read_line(&mut line).unwrap();
            let worker: u32 = line.trim().parse().unwrap();
            let (root, partial) = walk(&Procfs, service.id(), false).unwrap();
            assert!(root.threads >= 2, "{root:?}");
            assert!(partial.iter().any(|p| p.pid == worker), "{worker} in {partial:?}");
            // SAFETY: only signals the worker this test started.
            unsafe { libc::kill(worker as libc::pid_t, libc::SIGKILL) };
            service.kill().unwrap();
            service.wait().unwrap();
        }

        #[test]
        fn a_real_escapee_is_found_by_the_walk_and_killed() {
            let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/services/escaper.py");
            let mut command = Command::new("python3");
            command.arg(script).stdout(Stdio::piped());
            // SAFETY: prctl only, as the supervisor's own spawn does.
            unsafe {
                command.pre_exec(|| {
                    libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong);
                    Ok(())
                });
            }
            let mut service = command.spawn().unwrap();
            let mut out = std::io::BufReader::new(service.stdout.take().unwrap());
            let mut line = String::new();
            out.read_line(&mut line).unwrap();
            let worker: u32 = line.trim().strip_prefix("ESCAPED ").unwrap().parse().unwrap();
            let pgid = descendants(service.id()).iter().find(|p| p.pid == worker).expect("under the subreaper").pgid;
            assert_ne!(pgid, service.id(), "it left the service's group");
            let tree = ServiceTree::new(service.id(), None, LOADING);
            tree.tick();
            assert_eq!(tree.escaped_groups(), [pgid]);
            tree.kill_known();
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while !matches!(state(worker), None | Some('Z')) {
                assert!(std::time::Instant::now() < deadline, "the escaped worker still runs");
                std::thread::sleep(Duration::from_millis(10));
            }
            service.kill().unwrap();
            service.wait().unwrap();
        }

        #[test]
        fn the_tree_peak_counts_a_grandchild() {
            // sh, and below it python holding 64 MB.
            let alloc = "import time\nb=bytearray(64<<20)\nfor i in range(0,len(b),4096): b[i]=1\nprint('ok',flush=True)\ntime.sleep(30)";
            let mut sh = Command::new("sh")
                .args(["-c", "python3 -c \"$ALLOC\" & wait"])
                .env("ALLOC", alloc)
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            let mut line = String::new();
            std::io::BufReader::new(sh.stdout.take().unwrap()).read_line(&mut line).unwrap();
            assert_eq!(line.trim(), "ok");
            let tree = ServiceTree::new(sh.id(), None, LOADING);
            let peak = tree.peak_rss_mb().unwrap();
            assert!(peak >= 64, "the grandchild's 64 MB: {peak} MB");
            assert!(crate::services::tree_rss_mb(sh.id()).unwrap() >= 64);
            for p in descendants(sh.id()) {
                // SAFETY: only signals the python this test started.
                unsafe { libc::kill(p.pid as libc::pid_t, libc::SIGKILL) };
            }
            sh.kill().unwrap();
            sh.wait().unwrap();
        }
    }
}
