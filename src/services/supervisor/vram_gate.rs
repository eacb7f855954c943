//! The VRAM gate before a GPU load.

use std::time::Instant;

use super::first_reading::ReadingGate;
use super::{ms, Shared};
use crate::error::{ErrorCode, SidecarError, SidecarResult};
use crate::services::config::GpuNeed;
use crate::services::events::ServiceEventKind;
use crate::services::hooks::{LoadSeen, VramReading, VramSource};
use crate::services::needs::vram_need_mb;
use crate::services::profile::LearnedProfile;

impl Shared {
    /// Waits until `gpu_key` (the service's GPU, as placed) has room for the service plus headroom. A reading taken before another
    /// service on that GPU was spawned does not show that service's memory yet, so its expected
    /// need is taken off the reading (as the arbiter does for leases granted after a sample). An
    /// attached Telemetry's first reading is waited for (within `vramTimeoutMs`); off (with an
    /// event saying why) when a reading shows no NVML or not this GPU, with no Telemetry, or with
    /// no estimate of the service's need.
    pub(super) async fn vram_gate(
        &self,
        i: usize,
        gpu: &GpuNeed,
        gpu_key: &str,
        learned: LearnedProfile,
    ) -> SidecarResult<()> {
        let gate_off = |reason: &str| {
            self.emit(i, ServiceEventKind::VramGateOff { gpu_key: gpu_key.to_string(), reason: reason.to_string() });
            Ok(())
        };
        let Some(source) = &self.hooks.vram else {
            return gate_off("no VRAM telemetry source");
        };
        let limit_ms = self.config.vram_timeout_ms.get();
        self.await_first_reading(i, ReadingGate::Vram, limit_ms, || source.first_reading_pending()).await?;
        let Some(need) = vram_need_mb(gpu, &learned) else {
            return gate_off("no vramMb configured and none learned from an earlier run");
        };
        let needed_mb = need.saturating_add(self.config.vram_headroom_mb.get());
        let deadline = Instant::now() + ms(limit_ms);
        let poll = ms(self.spec(i).probe_interval_ms.get());
        let mut announced = false;
        let mut tried_eviction = false;
        loop {
            let (unseen_mb, free_mb) = {
                // Checked and marked under one lock: a start that fits counts against the next
                // check at once (as spawned after any reading), not only once it is spawned.
                let _gating = self.vram_gating.lock().expect("vram gating lock");
                let Some(reading) = source.free_mb(gpu_key) else {
                    return gate_off(&source.no_reading_reason(gpu_key));
                };
                let unseen_mb = self.unseen_vram_mb(i, gpu_key, reading, source.as_ref());
                let free_mb = reading.free_mb.saturating_sub(unseen_mb);
                if free_mb >= needed_mb {
                    self.cell(i).spawned_at_ms = Some(u64::MAX);
                    return Ok(());
                }
                (unseen_mb, free_mb)
            };
            if !tried_eviction {
                tried_eviction = true;
                if self.make_room(i, &gpu.key, needed_mb - free_mb).await {
                    continue;
                }
            }
            if !announced {
                self.emit(i, ServiceEventKind::VramWait { gpu_key: gpu_key.to_string(), needed_mb, free_mb });
                announced = true;
            }
            if Instant::now() >= deadline {
                return Err(SidecarError::new(
                    ErrorCode::VramTimeout,
                    format!(
                        "{}: {} had {free_mb} MB free after {limit_ms} ms{}, needs {needed_mb} MB ({need} MB + {} MB headroom)",
                        self.spec(i).name,
                        gpu_key,
                        if unseen_mb > 0 {
                            format!(" (the reading less {unseen_mb} MB expected for services spawned after it)")
                        } else {
                            String::new()
                        },
                        self.config.vram_headroom_mb.get()
                    ),
                ));
            }
            tokio::time::sleep(poll.min(deadline.saturating_duration_since(Instant::now()))).await;
        }
    }

    /// The VRAM the other services on `gpu_key` are still to take beyond what `reading` shows:
    /// the expected need of one admitted or spawned at or after the reading (ties count, both
    /// times being whole ms); for one spawned before it and not yet ready when it was taken, the
    /// rest of its load, since a load grows until it is ready: its need less what process lists
    /// read since its spawn show for it, all of its need when none was read since, nothing when
    /// the source has no process lists (its reading may show all of the load already).
    fn unseen_vram_mb(&self, i: usize, gpu_key: &str, reading: VramReading, source: &dyn VramSource) -> u64 {
        let mut unseen_mb = 0u64;
        for j in self.listed().into_iter().filter(|&j| j != i) {
            if self.gpu_key(j).as_deref() != Some(gpu_key) {
                continue;
            }
            let (spawned_at_ms, pid, time_to_ready_ms) = {
                let cell = self.cell(j);
                (cell.spawned_at_ms, cell.pid, cell.time_to_ready_ms)
            };
            let Some(spawned_at_ms) = spawned_at_ms else { continue };
            let expected_mb = self.expected_vram_mb(j);
            if spawned_at_ms >= reading.sampled_at_ms {
                unseen_mb = unseen_mb.saturating_add(expected_mb);
                continue;
            }
            if time_to_ready_ms.is_some_and(|t| spawned_at_ms.saturating_add(t) <= reading.sampled_at_ms) {
                continue;
            }
            let rest_mb = match pid.map(|pid| source.load_seen(gpu_key, pid, spawned_at_ms)) {
                Some(LoadSeen::Shown(shown_mb)) => expected_mb.saturating_sub(shown_mb),
                Some(LoadSeen::NotYet) => expected_mb,
                // The reading may show all of it already (a source with no process lists).
                Some(LoadSeen::Unknown) | None => 0,
            };
            unseen_mb = unseen_mb.saturating_add(rest_mb);
        }
        unseen_mb
    }

    /// The VRAM (MB) service `j` is expected to take: its `vramMb`, else its learned peak, else 0.
    pub(super) fn expected_vram_mb(&self, j: usize) -> u64 {
        let Some(gpu) = &self.spec(j).gpu else { return 0 };
        gpu.vram_mb
            .map(|mb| mb.get())
            .or_else(|| self.profiles.lock().expect("profiles lock").get(&self.spec(j).name).peak_vram_mb)
            .unwrap_or(0)
    }
}
