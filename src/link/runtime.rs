//! The addon's tokio runtime, on which the supervisor and napi's promises run.

/// The runtime threads, as they show in debuggers and `top -H`.
pub const RUNTIME_THREAD_NAME: &str = "gpu-sidecar-rt";

/// A named runtime with 2 to 4 workers (a node's services need few; the GPU does the work).
pub fn addon_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 4));
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name(RUNTIME_THREAD_NAME)
        .worker_threads(workers)
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn its_threads_carry_the_addons_name_and_timers_work() {
        let runtime = addon_runtime().unwrap();
        let name = runtime.block_on(async {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            tokio::spawn(async { std::thread::current().name().map(String::from) }).await.unwrap()
        });
        assert_eq!(name.as_deref(), Some(RUNTIME_THREAD_NAME));
    }
}
