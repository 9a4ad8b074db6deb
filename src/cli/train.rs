//! `lumind train`: run a training job from a config file, in one process or
//! as a rank of an MPI launch (`mpirun -np N lumind train ...`).

use super::args::DeviceArgs;
use std::path::PathBuf;

use anyhow::Result;

use crate::train::config::TrainConfig;

use crate::train::trainer::train_in;
use crate::train::world::World;
use lumind_compilers::collective::ThreadRanks;

#[derive(clap::Args)]
pub struct Args {
    /// Job config (configs/*.toml)
    #[arg(long)]
    config: PathBuf,
    /// Continue the run from its last checkpoint in `out`
    #[arg(long)]
    resume: bool,
    /// Override `optim.max_steps`
    #[arg(long)]
    max_steps: Option<usize>,
    /// Override `out` (the run directory)
    #[arg(long)]
    out: Option<PathBuf>,
    #[command(flatten)]
    on: DeviceArgs,
}

pub fn run(a: Args) -> Result<()> {
    let mut cfg = TrainConfig::load(&a.config)?;
    if let Some(m) = a.max_steps {
        cfg.optim.max_steps = Some(m);
    }
    if let Some(o) = a.out {
        cfg.out = o;
    }
    cfg.validate().map_err(|e| anyhow::anyhow!("{}: {e:#}", a.config.display()))?;
    // test hook: N ranks as threads of this process, to test data-parallel
    // training without MPI
    if let Some(n) = std::env::var("LUMIND_TEST_THREAD_RANKS").ok().and_then(|v| v.parse::<usize>().ok()) {
        return thread_ranks(&cfg, a.resume, a.on.device, n);
    }
    let world = World::detect()?;
    match train_in(&cfg, a.resume, a.on.device, &world) {
        Ok(s) if s.interrupted => Err(super::interrupted::Interrupted.into()),
        Ok(_) => Ok(()),
        Err(e) if world.size() > 1 => {
            // an error one rank sees alone (its data, its disk) would leave
            // the others waiting in the next all-reduce: end them all
            eprintln!("error on rank {} of {}: {e:#}", world.rank(), world.size());
            world.abort(1)
        }
        Err(e) => Err(e),
    }
}

fn thread_ranks(cfg: &TrainConfig, resume: bool, device: lumind_compilers::Backend, n: usize) -> Result<()> {
    let n = n.max(1);
    let (tx, rx) = std::sync::mpsc::channel();
    // each rank has a kernel pool of its own, as a process would (`--threads` each)
    let threads = rayon::current_num_threads();
    for (rank, c) in ThreadRanks::group(n).into_iter().enumerate() {
        let (cfg, tx) = (cfg.clone(), tx.clone());
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build()?;
        std::thread::spawn(move || {
            let run = || pool.install(|| train_in(&cfg, resume, device, &World::of(c)));
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(run));
            let _ = tx.send((rank, r.unwrap_or_else(|_| Err(anyhow::anyhow!("panicked")))));
        });
    }
    let mut interrupted = false;
    for _ in 0..n {
        let (rank, r) = rx.recv().expect("every rank reports");
        match r {
            Ok(s) => interrupted |= s.interrupted,
            Err(e) => {
                // as MPI_Abort: the other ranks may be waiting on this one
                eprintln!("error on rank {rank} of {n}: {e:#}");
                std::process::exit(1);
            }
        }
    }
    if interrupted {
        return Err(super::interrupted::Interrupted.into());
    }
    Ok(())
}
