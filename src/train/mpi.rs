//! MPI (the `mpi` feature): `MPI_COMM_WORLD` as a [`Collective`], through
//! rsmpi. MPI's default error handler ends the whole job on a failed call,
//! and OpenMPI's `mpirun` ends every rank when one exits abnormally, so a
//! dead rank never leaves the others waiting.

use std::sync::Mutex;

use anyhow::{bail, Result};
use lumind_compilers::collective::{Collective, Comm};
use mpi::collective::SystemOperation;
use mpi::environment::{Threading, Universe};
use mpi::topology::{Communicator, SimpleCommunicator};
use mpi::traits::*;

pub struct Mpi {
    universe: Universe,
}

impl Mpi {
    pub fn init() -> Result<Mpi> {
        // the graphs run on one thread at a time; the threads of a kernel
        // never call MPI
        let Some((universe, level)) = mpi::initialize_with_threading(Threading::Serialized) else {
            bail!("MPI was initialised twice");
        };
        if level < Threading::Serialized {
            bail!("this MPI library offers threading level {level:?}; lumind needs Serialized");
        }
        Ok(Mpi { universe })
    }

    pub fn comm(&self) -> Comm {
        let world = self.universe.world();
        Comm::new(std::sync::Arc::new(MpiWorld {
            rank: world.rank() as usize,
            size: world.size() as usize,
            world,
            scratch: Mutex::new(vec![]),
        }))
    }

    pub fn abort(&self, code: i32) -> ! {
        self.universe.world().abort(code)
    }
}

struct MpiWorld {
    rank: usize,
    size: usize,
    world: SimpleCommunicator,
    /// the send side of an all-reduce (rsmpi has no MPI_IN_PLACE)
    scratch: Mutex<Vec<f32>>,
}

// SAFETY: MPI runs at the Serialized level (checked in `Mpi::init`): calls may
// come from any thread so long as no two overlap, which the mutex and the
// trainer's one graph at a time ensure.
unsafe impl Send for MpiWorld {}
unsafe impl Sync for MpiWorld {}

/// Messages of at most this many elements (MPI counts are 32-bit).
const CHUNK: usize = 1 << 28;

impl Collective for MpiWorld {
    fn rank(&self) -> usize {
        self.rank
    }
    fn size(&self) -> usize {
        self.size
    }
    fn sum_f32(&self, data: &mut [f32]) {
        let mut send = self.scratch.lock().expect("no MPI call panicked");
        for recv in data.chunks_mut(CHUNK) {
            send.clear();
            send.extend_from_slice(recv);
            self.world.all_reduce_into(&send[..], recv, SystemOperation::sum());
        }
    }
    fn sum_f64(&self, data: &mut [f64]) {
        let _one_at_a_time = self.scratch.lock().expect("no MPI call panicked");
        let send = data.to_vec();
        self.world.all_reduce_into(&send[..], data, SystemOperation::sum());
    }
    fn transport(&self) -> String {
        "MPI".into()
    }
}
