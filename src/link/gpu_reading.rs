//! A telemetry GPU sample as the arbiter takes it. The conversion lives in the glue, where samples
//! are fed to an arbiter, so neither core component knows the other's types.

use crate::arbiter::{GpuReading, Micros};
use crate::telemetry::GpuSample;

/// `gpu.reading(at)`: a GPU sample's figures as an arbiter reading.
pub trait SampleReading {
    /// This GPU's figures as the arbiter takes them; `at` is on the arbiter's clock.
    fn reading(&self, at: Micros) -> GpuReading;
}

impl SampleReading for GpuSample {
    fn reading(&self, at: Micros) -> GpuReading {
        GpuReading { at, utilization_gpu: self.utilization_gpu, free_mb: self.free_mb, total_mb: self.total_mb }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::sample::fixtures;

    #[test]
    fn converts_a_gpu_into_an_arbiter_reading() {
        let s = fixtures::sample(2_000.0);
        assert_eq!(
            s.gpus[0].reading(2_000_007),
            GpuReading { at: 2_000_007, utilization_gpu: Some(50.0), free_mb: Some(8_000), total_mb: Some(16_000) }
        );
    }
}
