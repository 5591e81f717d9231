pub mod example;
pub mod rng;
