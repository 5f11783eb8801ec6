//! Support code shared by the `tern` tool and the criterion benches (`benches/`): synthetic models of named
//! shapes, a memory-read bandwidth probe and the machine's core count.

pub mod cpu;
pub mod membw;
pub mod synthetic;
pub mod tokenize;
