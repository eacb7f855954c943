//! Prometheus text exposition (format 0.0.4) of one sample.

use std::fmt::Write;

use super::sample::{GpuSample, Sample, BYTES_PER_MB};

/// Picks one figure of a GPU.
type GpuFigure = fn(&GpuSample) -> Option<f64>;

/// Renders a sample as Prometheus gauges. GPU figures that were not measured are left out rather
/// than reported as zero.
pub fn render(sample: &Sample) -> String {
    let mut out = String::with_capacity(2048);
    let reason = sample.nvml.reason.map_or("", |r| r.as_str());
    gauge(&mut out, "gpu_sidecar_nvml_available", "1 when NVML gives GPU figures.");
    let _ = writeln!(out, "gpu_sidecar_nvml_available{{reason=\"{reason}\"}} {}", u8::from(sample.nvml.available));

    let per_gpu: [(&str, &str, GpuFigure); 7] = [
        ("gpu_sidecar_gpu_memory_used_bytes", "GPU memory in use.", |g| bytes(g.used_mb)),
        ("gpu_sidecar_gpu_memory_free_bytes", "GPU memory free.", |g| bytes(g.free_mb)),
        ("gpu_sidecar_gpu_memory_total_bytes", "GPU memory installed.", |g| bytes(g.total_mb)),
        ("gpu_sidecar_gpu_utilization_percent", "Time a kernel was running, percent.", |g| g.utilization_gpu),
        ("gpu_sidecar_gpu_memory_utilization_percent", "Time device memory was busy, percent.", |g| {
            g.utilization_memory
        }),
        ("gpu_sidecar_gpu_temperature_celsius", "GPU die temperature.", |g| g.temperature_c),
        ("gpu_sidecar_gpu_power_watts", "GPU power draw.", |g| g.power_w),
    ];
    for (name, help, pick) in per_gpu {
        gauge(&mut out, name, help);
        for gpu in &sample.gpus {
            if let Some(v) = pick(gpu) {
                let _ = writeln!(out, "{name}{{gpu=\"{}\"}} {v}", escape(&gpu.key));
            }
        }
    }
    gauge(&mut out, "gpu_sidecar_gpu_lost", "1 when the GPU fell off the bus.");
    for gpu in &sample.gpus {
        let _ = writeln!(out, "gpu_sidecar_gpu_lost{{gpu=\"{}\"}} {}", escape(&gpu.key), u8::from(gpu.lost));
    }
    gauge(&mut out, "gpu_sidecar_gpu_process_memory_bytes", "GPU memory held by a process.");
    for gpu in &sample.gpus {
        for p in &gpu.processes {
            if let Some(used) = bytes(p.used_mb) {
                let _ = writeln!(
                    out,
                    "gpu_sidecar_gpu_process_memory_bytes{{gpu=\"{}\",pid=\"{}\",service=\"{}\"}} {used}",
                    escape(&gpu.key),
                    p.pid,
                    escape(p.service.as_deref().unwrap_or(""))
                );
            }
        }
    }

    let host = &sample.host;
    let host_gauges: [(&str, &str, f64); 6] = [
        ("gpu_sidecar_host_memory_total_bytes", "Host memory installed.", (host.total_mb * BYTES_PER_MB) as f64),
        (
            "gpu_sidecar_host_memory_available_bytes",
            "Host memory available to new work.",
            (host.available_mb * BYTES_PER_MB) as f64,
        ),
        ("gpu_sidecar_host_swap_total_bytes", "Swap space.", (host.swap_total_mb * BYTES_PER_MB) as f64),
        ("gpu_sidecar_host_swap_used_bytes", "Swap in use.", (host.swap_used_mb * BYTES_PER_MB) as f64),
        ("gpu_sidecar_host_cpu_percent", "Whole-machine CPU use, percent.", host.cpu_percent),
        ("gpu_sidecar_zombie_children", "Exited children of this process never reaped.", host.zombie_children.into()),
    ];
    for (name, help, value) in host_gauges {
        gauge(&mut out, name, help);
        let _ = writeln!(out, "{name} {value}");
    }
    gauge(&mut out, "gpu_sidecar_process_rss_bytes", "Resident memory of a registered process.");
    for p in &host.processes {
        if let Some(rss) = p.rss_mb {
            let _ = writeln!(
                out,
                "gpu_sidecar_process_rss_bytes{{pid=\"{}\",service=\"{}\"}} {}",
                p.pid,
                escape(&p.label),
                rss * BYTES_PER_MB
            );
        }
    }
    out
}

fn bytes(mb: Option<u64>) -> Option<f64> {
    mb.map(|mb| (mb * BYTES_PER_MB) as f64)
}

fn gauge(out: &mut String, name: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
}

fn escape(label: &str) -> String {
    label.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::sample::fixtures::sample;
    use crate::telemetry::sample::{GpuProcess, HostProcess, NvmlStatus, NvmlUnavailable};

    #[test]
    fn renders_gpu_process_and_host_gauges() {
        let mut s = sample(1.0);
        s.gpus[0].processes.push(GpuProcess { pid: 7, used_mb: Some(2), service: Some("a\"b".into()) });
        s.gpus[0].power_w = None;
        s.host.processes = vec![HostProcess { pid: 9, label: "ASR".into(), rss_mb: Some(3) }];
        s.host.zombie_children = 2;
        let text = render(&s);
        for line in [
            "gpu_sidecar_nvml_available{reason=\"\"} 1",
            "gpu_sidecar_gpu_memory_used_bytes{gpu=\"gpu:0\"} 8388608000",
            "gpu_sidecar_gpu_memory_free_bytes{gpu=\"gpu:0\"} 8388608000",
            "gpu_sidecar_gpu_memory_total_bytes{gpu=\"gpu:0\"} 16777216000",
            "gpu_sidecar_gpu_utilization_percent{gpu=\"gpu:0\"} 50",
            "gpu_sidecar_gpu_temperature_celsius{gpu=\"gpu:0\"} 60",
            "gpu_sidecar_gpu_lost{gpu=\"gpu:0\"} 0",
            "gpu_sidecar_gpu_process_memory_bytes{gpu=\"gpu:0\",pid=\"42\",service=\"ASR\"} 1048576000",
            "gpu_sidecar_gpu_process_memory_bytes{gpu=\"gpu:0\",pid=\"7\",service=\"a\\\"b\"} 2097152",
            "gpu_sidecar_host_memory_total_bytes 33554432000",
            "gpu_sidecar_host_memory_available_bytes 16777216000",
            "gpu_sidecar_host_swap_used_bytes 0",
            "gpu_sidecar_host_cpu_percent 10",
            "gpu_sidecar_zombie_children 2",
            "gpu_sidecar_process_rss_bytes{pid=\"9\",service=\"ASR\"} 3145728",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        assert!(!text.contains("gpu_sidecar_gpu_power_watts{"), "{text}");
        assert!(text.contains("# TYPE gpu_sidecar_gpu_power_watts gauge"));
    }

    #[test]
    fn without_nvml_reports_the_reason_and_host_figures() {
        let mut s = sample(1.0);
        s.nvml = NvmlStatus { available: false, reason: Some(NvmlUnavailable::LibraryNotFound) };
        s.gpus.clear();
        let text = render(&s);
        assert!(text.contains("gpu_sidecar_nvml_available{reason=\"LIBRARY_NOT_FOUND\"} 0\n"), "{text}");
        assert!(!text.contains("{gpu="), "{text}");
        assert!(text.contains("gpu_sidecar_host_memory_total_bytes 33554432000\n"));
    }
}
