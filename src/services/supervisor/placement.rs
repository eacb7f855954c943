//! Which GPU a service runs on: its configured `gpu.key`, or for `auto`, the GPU with the most
//! free memory at each start, less the loads already on their way there.

use super::first_reading::ReadingGate;
use super::{ServiceState, Shared};
use crate::error::{ErrorCode, SidecarError, SidecarResult};
use crate::services::config::AUTO_GPU_KEY;
use crate::services::events::ServiceEventKind;
use crate::services::hooks::VramReading;

impl Shared {
    /// The GPU service `j` runs on: its configured key, or where `auto` placed it last (`None`
    /// for a CPU service, or an `auto` one not placed yet).
    pub(super) fn gpu_key(&self, j: usize) -> Option<String> {
        let spec = self.spec(j);
        let gpu = spec.gpu.as_ref()?;
        if gpu.key == AUTO_GPU_KEY {
            self.cell(j).gpu_key.clone()
        } else {
            Some(gpu.key.clone())
        }
    }

    /// The GPU this start of service `i` loads onto: its configured key, or for `auto` the
    /// GPU of the telemetry with the most free memory less the loads on their way there (ties:
    /// the first). Without any free-memory reading, the first GPU the telemetry lists. Waits
    /// (within `vramTimeoutMs`) for an attached Telemetry's first reading; fails with `NO_GPU`
    /// without a Telemetry, or when its reading lists no GPU.
    pub(super) async fn place(&self, i: usize) -> SidecarResult<Option<String>> {
        let Some(gpu) = &self.spec(i).gpu else { return Ok(None) };
        if gpu.key != AUTO_GPU_KEY {
            return Ok(Some(gpu.key.clone()));
        }
        let no_gpu = |why: &str| {
            SidecarError::new(
                ErrorCode::NoGpu,
                format!("{}: gpu.key is \"auto\" but {why}, so there is no GPU to place it on", self.spec(i).name),
            )
        };
        let Some(source) = &self.hooks.vram else { return Err(no_gpu("the supervisor has no VRAM telemetry source")) };
        let limit_ms = self.config.vram_timeout_ms.get();
        self.await_first_reading(i, ReadingGate::Placement, limit_ms, || source.first_reading_pending()).await?;
        let keys = source.gpu_keys();
        if keys.is_empty() {
            return Err(no_gpu(&format!(
                "{} (attach a Telemetry with NVML figures)",
                source.no_reading_reason(AUTO_GPU_KEY)
            )));
        }
        // One placement at a time: each one sees the GPU the one before it chose.
        let placing = self.placing.lock().expect("placing lock");
        let mut best: Option<(String, u64)> = None;
        for key in &keys {
            let Some(reading) = source.free_mb(key) else { continue };
            let free_mb = reading.free_mb.saturating_sub(self.in_flight_vram_mb(i, key, reading));
            if best.as_ref().is_none_or(|(_, most)| free_mb > *most) {
                best = Some((key.clone(), free_mb));
            }
        }
        let (gpu_key, free_mb) = match best {
            Some((key, free_mb)) => (key, Some(free_mb)),
            None => (keys[0].clone(), None),
        };
        self.cell(i).gpu_key = Some(gpu_key.clone());
        self.emit(i, ServiceEventKind::Placed { gpu_key: gpu_key.clone(), free_mb });
        drop(placing);
        if !gpu.task_types.is_empty() {
            if let Some(routes) = &self.hooks.task_routes {
                routes.routes_changed(self.task_type_gpus());
            }
        }
        Ok(Some(gpu_key))
    }

    /// The expected VRAM of the other services starting on `gpu_key` whose memory `reading`
    /// does not show yet: placed or waiting there and not spawned, or spawned at or after it.
    fn in_flight_vram_mb(&self, i: usize, gpu_key: &str, reading: VramReading) -> u64 {
        let mut in_flight_mb = 0u64;
        for j in self.listed().into_iter().filter(|&j| j != i) {
            if self.gpu_key(j).as_deref() != Some(gpu_key) {
                continue;
            }
            let (state, spawned_at_ms) = {
                let cell = self.cell(j);
                (cell.state, cell.spawned_at_ms)
            };
            let unseen = match spawned_at_ms {
                Some(at) => at >= reading.sampled_at_ms,
                None => state == ServiceState::Starting,
            };
            if unseen {
                in_flight_mb = in_flight_mb.saturating_add(self.expected_vram_mb(j));
            }
        }
        in_flight_mb
    }

    /// `(task type, GPU key)` for each task type a GPU service claims, where that service runs
    /// (an `auto` one once placed).
    pub(super) fn task_type_gpus(&self) -> Vec<(String, String)> {
        let mut routes = Vec::new();
        for j in self.listed() {
            let spec = self.spec(j);
            let (Some(gpu), Some(key)) = (&spec.gpu, self.gpu_key(j)) else { continue };
            routes.extend(gpu.task_types.iter().map(|t| (t.clone(), key.clone())));
        }
        routes
    }
}
