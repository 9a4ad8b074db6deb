//! `--fusion search`: a kernel with several ways to run a call (a GEMV's
//! SIMD level and thread split, a matrix product's thread split) times each
//! way on its real calls, on this machine, and keeps the fastest.
//!
//! The search happens in place: while a call shape is undecided, each of
//! its calls runs the way with the fewest samples so far and reports its
//! time, so the samples see the caches and neighbours of a real run and no
//! work is done twice. Every way computes the same values (see each
//! kernel's candidates), so the outputs during a search are as good as
//! after it. Once every way has [`SAMPLES`] samples, the fastest (best
//! sample) is chosen and written to a cache file, one per CPU model and
//! feature set, keyed inside by thread count and call shape; a later
//! process reads it once and measures nothing.
//!
//! The cache lives in `$LUMIND_SEARCH_CACHE`, else
//! `$XDG_CACHE_HOME/lumind/search`, else `~/.cache/lumind/search`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Samples per way before a shape is decided.
pub const SAMPLES: usize = 5;

/// A way whose median sample is this many times the fastest way's is
/// dropped without more samples (a GEMV without SIMD, say).
pub const PRUNE: f64 = 2.0;

/// What was chosen for a call shape, and what each way measured (its
/// median sample, in microseconds).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Choice {
    pub chosen: String,
    pub measured_us: BTreeMap<String, f64>,
}

/// The way a call should run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Pick {
    /// decided: run way `i`
    Chosen(usize),
    /// still searching: run way `i` and [`Tuner::record`] its time
    Try(usize),
}

/// A shape being searched: each way's samples (seconds).
struct Trial {
    names: Vec<String>,
    samples: Vec<Vec<f64>>,
    /// whether the first call, a warm-up whose time is not kept, has run
    /// (it pays for cold caches and fresh pages, whatever way it runs)
    warm: bool,
}

impl Trial {
    fn new(ways: &[String]) -> Trial {
        Trial { names: ways.to_vec(), samples: vec![vec![]; ways.len()], warm: false }
    }
}

#[derive(Serialize, Deserialize)]
struct CacheFile {
    machine: String,
    choices: BTreeMap<String, Choice>,
}

/// The choices of one machine: loaded from its cache file, searched for
/// where missing, saved as they are decided.
pub struct Tuner {
    machine: String,
    file: Option<PathBuf>,
    choices: BTreeMap<String, Choice>,
    /// undecided shapes
    trials: BTreeMap<String, Trial>,
    /// decided shapes: the index of the way chosen among the ways a
    /// kernel offers (the same ways for the same shape, within a process)
    index: std::collections::HashMap<String, usize>,
    /// kernel node -> the shape it last ran, for `inspect`
    consulted: BTreeMap<usize, String>,
    /// ways timed so far by this process (0 after a warm start)
    pub measured_calls: usize,
    warned: bool,
}

impl Tuner {
    /// The tuner of this machine with its cache in `dir` (None: in memory only).
    pub fn open(dir: Option<&Path>) -> Tuner {
        let machine = machine();
        let file = dir.map(|d| d.join(format!("{:016x}.json", crate::fnv::fnv1a(machine.as_bytes()))));
        let choices = file.as_deref().and_then(|f| read_cache(f, &machine)).unwrap_or_default();
        Tuner {
            machine,
            file,
            choices,
            trials: BTreeMap::new(),
            index: Default::default(),
            consulted: BTreeMap::new(),
            measured_calls: 0,
            warned: false,
        }
    }

    /// The cache file, if there is one.
    pub fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    /// How to run a call of shape `key` whose possible ways `ways()` names
    /// (asked for only when this process has not chosen for the shape yet).
    pub fn pick(&mut self, key: &str, ways: impl FnOnce() -> Vec<String>) -> Pick {
        if let Some(&i) = self.index.get(key) {
            return Pick::Chosen(i);
        }
        let ways = ways();
        if let Some(c) = self.choices.get(key) {
            if let Some(i) = ways.iter().position(|w| *w == c.chosen) {
                self.index.insert(key.to_string(), i);
                return Pick::Chosen(i);
            }
            // (a cache from a build with other ways: search again)
        }
        if ways.len() == 1 {
            return Pick::Chosen(0);
        }
        let trial = self.trials.entry(key.to_string()).or_insert_with(|| Trial::new(&ways));
        if trial.names != ways {
            *trial = Trial::new(&ways);
        }
        let open = still_open(&trial.samples);
        let fewest = (0..ways.len()).filter(|&i| open[i]).min_by_key(|&i| trial.samples[i].len()).unwrap_or(0);
        Pick::Try(fewest)
    }

    /// The time of a call of `key` run way `i` (after [`Pick::Try`]);
    /// decides the shape once every way has its samples.
    pub fn record(&mut self, key: &str, i: usize, t: Duration) {
        self.measured_calls += 1;
        let Some(Trial { names, samples, warm }) = self.trials.get_mut(key) else { return };
        if !std::mem::replace(warm, true) {
            return;
        }
        if let Some(s) = samples.get_mut(i) {
            s.push(t.as_secs_f64());
        }
        if still_open(samples).contains(&true) {
            return;
        }
        let typical: Vec<f64> = samples.iter().map(|s| median(s)).collect();
        let win = (0..typical.len()).min_by(|&a, &b| typical[a].total_cmp(&typical[b])).unwrap();
        let measured_us = names.iter().cloned().zip(typical.iter().map(|t| (t * 1e7).round() / 10.0)).collect();
        let choice = Choice { chosen: names[win].clone(), measured_us };
        // (every way has a sample: an unsampled one would have stayed open)
        self.trials.remove(key);
        self.choices.insert(key.to_string(), choice);
        self.save();
    }

    /// Shapes being searched (seen, not yet decided).
    pub fn pending(&self) -> usize {
        self.trials.len()
    }

    /// What was chosen for `key`, if it is decided.
    pub fn choice(&self, key: &str) -> Option<&Choice> {
        self.choices.get(key)
    }

    /// Every decided shape.
    pub fn choices(&self) -> &BTreeMap<String, Choice> {
        &self.choices
    }

    /// Remember that kernel node `node` ran a call of shape `key`.
    pub fn note(&mut self, node: usize, key: &str) {
        if self.consulted.get(&node).is_none_or(|k| k != key) {
            self.consulted.insert(node, key.to_string());
        }
    }

    /// The shape each kernel node last ran (by node index).
    pub fn consulted(&self) -> &BTreeMap<usize, String> {
        &self.consulted
    }

    /// Write the choices (merged with what another process may have saved
    /// meanwhile) atomically; on failure, warn once and keep them in memory.
    fn save(&mut self) {
        let Some(file) = self.file.clone() else { return };
        let mut choices = read_cache(&file, &self.machine).unwrap_or_default();
        choices.extend(self.choices.iter().map(|(k, v)| (k.clone(), v.clone())));
        let text = serde_json::to_string_pretty(&CacheFile { machine: self.machine.clone(), choices }).expect("choices serialise");
        let tmp = file.with_extension(format!("tmp{}", std::process::id()));
        let written = file
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|_| std::fs::write(&tmp, text))
            .and_then(|_| std::fs::rename(&tmp, &file));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            if !self.warned {
                eprintln!("warning: cannot save the search cache {}: {e} (choices kept for this process only)", file.display());
                self.warned = true;
            }
        }
    }
}

/// The median of some samples (infinite for none): a way's typical time,
/// which a lucky sample does not move (on a shared host a way that needs
/// the other thread awake is sometimes fast and often not).
fn median(samples: &[f64]) -> f64 {
    if samples.is_empty() {
        return f64::INFINITY;
    }
    let mut v = samples.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Which ways still need samples: none yet, or fewer than [`SAMPLES`]
/// unless their median already is over [`PRUNE`] times the fastest's.
fn still_open(samples: &[Vec<f64>]) -> Vec<bool> {
    let fastest = samples.iter().map(|s| median(s)).fold(f64::INFINITY, f64::min);
    samples.iter().map(|s| s.is_empty() || (s.len() < SAMPLES && median(s) <= PRUNE * fastest)).collect()
}

/// Choices of a cache file written for `machine`; None when it is missing,
/// unreadable or another machine's (a warning says which).
fn read_cache(file: &Path, machine: &str) -> Option<BTreeMap<String, Choice>> {
    let text = std::fs::read_to_string(file).ok()?;
    match serde_json::from_str::<CacheFile>(&text) {
        Ok(c) if c.machine == machine => Some(c.choices),
        Ok(_) => None,
        Err(e) => {
            eprintln!("warning: ignoring the search cache {}: {e}", file.display());
            None
        }
    }
}

/// Run a call of shape `key` from kernel node `node` the way the
/// process-wide tuner picks among the ways `ways()` names: `run(i)` runs
/// way `i`, and is timed while the shape is being searched.
pub fn run_searched(node: usize, key: &str, ways: impl FnOnce() -> Vec<String>, run: impl FnOnce(usize)) {
    let pick = {
        let mut tuner = global();
        tuner.note(node, key);
        tuner.pick(key, ways)
    };
    match pick {
        Pick::Chosen(i) => run(i),
        Pick::Try(i) => {
            let t = std::time::Instant::now();
            run(i);
            global().record(key, i, t.elapsed());
        }
    }
}

/// The directory the process-wide tuner keeps its cache in.
pub fn cache_dir() -> Option<PathBuf> {
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    env("LUMIND_SEARCH_CACHE")
        .or_else(|| env("XDG_CACHE_HOME").map(|d| d.join("lumind/search")))
        .or_else(|| env("HOME").map(|d| d.join(".cache/lumind/search")))
}

/// The process-wide tuner that `search` kernels consult (loaded on first use).
pub fn global() -> MutexGuard<'static, Tuner> {
    static TUNER: OnceLock<Mutex<Tuner>> = OnceLock::new();
    TUNER.get_or_init(|| Mutex::new(Tuner::open(cache_dir().as_deref()))).lock().unwrap_or_else(|e| e.into_inner())
}

/// This machine, as the cache is keyed: the CPU's model name and the vector
/// features the kernels can use.
pub fn machine() -> String {
    format!("{} [{}]", cpu_model(), crate::kernels::simd::features().join(" "))
}

fn cpu_model() -> String {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::__cpuid;
        // (leaves past the highest extended leaf are not read)
        let brand: Vec<u8> = {
            if __cpuid(0x8000_0000).eax >= 0x8000_0004 {
                (0x8000_0002u32..=0x8000_0004)
                    .flat_map(|l| {
                        let r = __cpuid(l);
                        [r.eax, r.ebx, r.ecx, r.edx].into_iter().flat_map(u32::to_le_bytes)
                    })
                    .collect()
            } else {
                vec![]
            }
        };
        let s = String::from_utf8_lossy(&brand).trim_matches(char::from(0)).trim().to_string();
        if !s.is_empty() {
            return s;
        }
    }
    std::env::consts::ARCH.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shape_is_decided_after_every_way_has_its_samples_and_the_cache_survives_a_restart() {
        let dir = std::env::temp_dir().join(format!("lumind-search-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let ways: Vec<String> = ["slow", "fast", "middling"].map(String::from).to_vec();
        let us = |w: usize| Duration::from_micros([15, 10, 12][w]);
        let mut t = Tuner::open(Some(&dir));
        let mut tried = [0usize; 3];
        for _ in 0..1 + 3 * SAMPLES {
            match t.pick("MatMul 1x8x8", || ways.clone()) {
                Pick::Try(i) => {
                    tried[i] += 1;
                    t.record("MatMul 1x8x8", i, us(i));
                }
                Pick::Chosen(i) => panic!("decided early on way {i}"),
            }
        }
        assert_eq!(tried, [SAMPLES + 1, SAMPLES, SAMPLES], "a warm-up, then the ways take turns");
        assert_eq!(t.pick("MatMul 1x8x8", || ways.clone()), Pick::Chosen(1));
        assert_eq!(t.pending(), 0);
        let c = t.choice("MatMul 1x8x8").unwrap().clone();
        assert_eq!(c.measured_us, BTreeMap::from([("slow".into(), 15.0), ("fast".into(), 10.0), ("middling".into(), 12.0)]));
        // a way more than PRUNE times the fastest gets no more samples
        let mut t2 = Tuner::open(None);
        let slow = |w: usize| Duration::from_micros([100, 10][w]);
        let mut calls = 0;
        while let Pick::Try(i) = t2.pick("k", || ways[..2].to_vec()) {
            t2.record("k", i, slow(i));
            calls += 1;
        }
        assert_eq!((calls, t2.choice("k").unwrap().chosen.as_str()), (2 + SAMPLES, "fast"));
        // one lucky sample does not win: the typical (median) time does
        let mut t3 = Tuner::open(None);
        let mut calls = [0usize; 2];
        while let Pick::Try(i) = t3.pick("lucky", || ways[..2].to_vec()) {
            calls[i] += 1;
            let us = if i == 0 && calls[0] == 2 {
                1
            } else if i == 0 {
                15
            } else {
                10
            };
            t3.record("lucky", i, Duration::from_micros(us));
        }
        assert_eq!(t3.choice("lucky").unwrap().chosen, "fast");
        // a new process reads the choice and measures nothing
        let mut again = Tuner::open(Some(&dir));
        assert_eq!(again.choice("MatMul 1x8x8"), Some(&c));
        assert_eq!(again.pick("MatMul 1x8x8", || ways.clone()), Pick::Chosen(1));
        assert_eq!(again.measured_calls, 0);
        // a build whose ways differ searches again, and so does another machine's file
        let mut other = Tuner::open(Some(&dir));
        assert!(matches!(other.pick("MatMul 1x8x8", || ways[..2].to_vec()), Pick::Chosen(1)));
        let mut other = Tuner::open(Some(&dir));
        assert!(matches!(other.pick("MatMul 1x8x8", || vec!["other".to_string(), "ways".to_string()]), Pick::Try(_)));
        let f = again.file().unwrap().to_path_buf();
        std::fs::write(&f, std::fs::read_to_string(&f).unwrap().replace(&machine(), "another CPU")).unwrap();
        assert!(Tuner::open(Some(&dir)).choice("MatMul 1x8x8").is_none());
        // a damaged file is ignored, not fatal
        std::fs::write(&f, "{ not json").unwrap();
        assert!(Tuner::open(Some(&dir)).choices().is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
