//! Collectives between the processes of a data-parallel run (MPI ranks, or
//! threads standing in for them in tests): what the [`AllReduce`] kernel and
//! the trainer need of a communicator, behind one trait so the graph layer
//! knows nothing of MPI.
//!
//! [`AllReduce`]: crate::kernels::all_reduce::AllReduce

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::Instant;

/// A group of `size` ranks that call each collective in the same order.
pub trait Collective: Send + Sync {
    /// This rank, from 0.
    fn rank(&self) -> usize;
    fn size(&self) -> usize;
    /// Element-wise sum over the ranks, in place: every rank ends with the
    /// same sums.
    fn sum_f32(&self, data: &mut [f32]);
    fn sum_f64(&self, data: &mut [f64]);
    /// What carries the sums (`MPI`, `threads`), for logs and `inspect`.
    fn transport(&self) -> String;
}

/// A shared handle on a [`Collective`], as graph nodes hold it (two are
/// equal when they are the same communicator), counting the time its sums
/// take.
#[derive(Clone)]
pub struct Comm {
    inner: Arc<dyn Collective>,
    busy_ns: Arc<AtomicU64>,
}

impl Comm {
    pub fn new(c: Arc<dyn Collective>) -> Comm {
        Comm { inner: c, busy_ns: Arc::new(AtomicU64::new(0)) }
    }
    pub fn rank(&self) -> usize {
        self.inner.rank()
    }
    pub fn size(&self) -> usize {
        self.inner.size()
    }
    pub fn transport(&self) -> String {
        self.inner.transport()
    }
    pub fn sum_f32(&self, data: &mut [f32]) {
        self.timed(|| self.inner.sum_f32(data))
    }
    pub fn sum_f64(&self, data: &mut [f64]) {
        self.timed(|| self.inner.sum_f64(data))
    }
    /// Seconds spent in sums so far (waiting for the other ranks included).
    pub fn seconds(&self) -> f64 {
        self.busy_ns.load(Ordering::Relaxed) as f64 * 1e-9
    }
    fn timed(&self, f: impl FnOnce()) {
        let t = Instant::now();
        f();
        self.busy_ns.fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
    }
}

impl PartialEq for Comm {
    fn eq(&self, other: &Comm) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }
}

impl fmt::Debug for Comm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rank {} of {} over {}", self.rank(), self.size(), self.transport())
    }
}

/// Ranks that are threads of one process: each collective waits for all of
/// them and sums in rank order, so results are the same on every rank and
/// every run (tests, and `LUMIND_TEST_THREAD_RANKS`).
pub struct ThreadRanks {
    rank: usize,
    group: Arc<Group>,
}

struct Group {
    size: usize,
    barrier: Barrier,
    slots: Mutex<Vec<Vec<f64>>>,
}

impl ThreadRanks {
    /// One handle per rank, to move to its thread.
    pub fn group(size: usize) -> Vec<Comm> {
        let group = Arc::new(Group { size, barrier: Barrier::new(size), slots: Mutex::new(vec![vec![]; size]) });
        (0..size).map(|rank| Comm::new(Arc::new(ThreadRanks { rank, group: group.clone() }))).collect()
    }

    fn sum(&self, values: Vec<f64>) -> Vec<f64> {
        let g = &self.group;
        g.slots.lock().expect("no rank panicked")[self.rank] = values;
        g.barrier.wait();
        let sums = {
            let slots = g.slots.lock().expect("no rank panicked");
            let mut sums = slots[0].clone();
            for s in &slots[1..] {
                assert_eq!(s.len(), sums.len(), "ranks summed buffers of different lengths");
                for (a, b) in sums.iter_mut().zip(s) {
                    *a += b;
                }
            }
            sums
        };
        // (no rank refills its slot before every rank has read them all)
        g.barrier.wait();
        sums
    }
}

impl Collective for ThreadRanks {
    fn rank(&self) -> usize {
        self.rank
    }
    fn size(&self) -> usize {
        self.group.size
    }
    fn sum_f32(&self, data: &mut [f32]) {
        // (summed in f64 and rounded once: for two ranks, exactly f32's a + b)
        let sums = self.sum(data.iter().map(|&x| x as f64).collect());
        for (d, s) in data.iter_mut().zip(sums) {
            *d = s as f32;
        }
    }
    fn sum_f64(&self, data: &mut [f64]) {
        let sums = self.sum(data.to_vec());
        data.copy_from_slice(&sums);
    }
    fn transport(&self) -> String {
        "threads".into()
    }
}
