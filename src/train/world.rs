//! The ranks a training run is one of: a single process, or a data-parallel
//! group launched by MPI (`mpirun -np N lumind train ...`, Slurm's `srun`),
//! which every rank detects from its launcher's environment.
//!
//! Without the `mpi` cargo feature a launched group is refused, so N copies
//! of one job never train side by side unawares.

use anyhow::Result;
use lumind_compilers::collective::Comm;

pub struct World {
    comm: Option<Comm>,
    /// keeps MPI initialised until the run ends (finalised on drop)
    #[cfg(feature = "mpi")]
    _mpi: Option<super::mpi::Mpi>,
}

/// Ranks and size a launcher put in the environment, if one did.
fn launched() -> Option<(usize, usize)> {
    let var = |k: &str| std::env::var(k).ok().and_then(|v| v.trim().parse::<usize>().ok());
    [("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"), ("PMI_RANK", "PMI_SIZE"), ("PMIX_RANK", "PMIX_SIZE")]
        .iter()
        .find_map(|(r, s)| Some((var(r)?, var(s)?)))
}

impl World {
    /// One process: no collectives.
    pub fn single() -> World {
        World::of_comm(None)
    }

    /// A group given by its communicator (thread ranks in tests).
    pub fn of(comm: Comm) -> World {
        World::of_comm(Some(comm))
    }

    fn of_comm(comm: Option<Comm>) -> World {
        World {
            comm: comm.filter(|c| c.size() > 1),
            #[cfg(feature = "mpi")]
            _mpi: None,
        }
    }

    /// The world this process was launched into: MPI's when a launcher
    /// started it (and this build has MPI), else a single process.
    pub fn detect() -> Result<World> {
        let Some((rank, size)) = launched() else { return Ok(World::single()) };
        #[cfg(feature = "mpi")]
        {
            let _ = (rank, size);
            let mpi = super::mpi::Mpi::init()?;
            let comm = mpi.comm();
            Ok(World { _mpi: Some(mpi), ..World::of(comm) })
        }
        #[cfg(not(feature = "mpi"))]
        {
            if size > 1 {
                anyhow::bail!(
                    "launched as rank {rank} of {size} (an MPI launcher's environment), but this lumind was built without MPI: \
                     rebuild it with `cargo build --release --features mpi` (needs libopenmpi-dev and libclang-dev)"
                );
            }
            Ok(World::single())
        }
    }

    pub fn rank(&self) -> usize {
        self.comm.as_ref().map_or(0, |c| c.rank())
    }

    pub fn size(&self) -> usize {
        self.comm.as_ref().map_or(1, |c| c.size())
    }

    /// Rank 0: the one that prints, logs and writes checkpoints.
    pub fn is_root(&self) -> bool {
        self.rank() == 0
    }

    /// The communicator of a group of more than one rank.
    pub fn comm(&self) -> Option<&Comm> {
        self.comm.as_ref()
    }

    /// Sum `v` over the ranks in place (nothing to do alone).
    pub fn sum(&self, v: &mut [f64]) {
        if let Some(c) = &self.comm {
            c.sum_f64(v);
        }
    }

    /// Fail on every rank unless every rank has the same `value` (what
    /// `what` names): a rank with the largest value sees the sum fall short.
    pub fn check_same(&self, what: &str, value: u64) -> Result<()> {
        if self.size() == 1 {
            return Ok(());
        }
        // three 21-bit pieces, each exact in an f64 sum
        let pieces = [value & 0x1f_ffff, (value >> 21) & 0x1f_ffff, value >> 42].map(|p| p as f64);
        let mut sums = pieces;
        self.sum(&mut sums);
        let n = self.size() as f64;
        let same = (pieces.iter().zip(&sums)).all(|(p, s)| p * n == *s);
        let mut agree = [same as u8 as f64];
        self.sum(&mut agree);
        if agree[0] != n {
            anyhow::bail!("the ranks disagree on {what} (rank {} of {})", self.rank(), self.size());
        }
        Ok(())
    }

    /// End every rank of the group now: the way out for an error seen by
    /// some ranks only, which would leave the others waiting in a collective.
    pub fn abort(&self, code: i32) -> ! {
        #[cfg(feature = "mpi")]
        if let Some(m) = &self._mpi {
            m.abort(code);
        }
        std::process::exit(code)
    }
}
