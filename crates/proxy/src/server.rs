//! Starting the workers and stopping them: the data plane's public face.

use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use inferlb_core::{IoDriver, ProxyConfig, Snapshots};
use monoio::net::TcpListener;
use monoio::{IoUringDriver, LegacyDriver, RuntimeBuilder};
use tokio::sync::watch;

use inferlb_core::WorkerStats;

use crate::tls::Terminator;
use crate::worker::{Phase, Worker};

/// Pending connections the kernel queues per listener before refusing.
const BACKLOG: i32 = 4096;
/// Submission queue entries per ring: enough for every connection of a busy
/// worker to have a read and a write in flight between two submissions.
const RING_ENTRIES: u32 = 4096;

/// The driver a worker ended up on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActiveDriver {
    /// io_uring.
    IoUring,
    /// epoll (monoio's legacy driver).
    Legacy,
}

impl ActiveDriver {
    /// A short name for logs, metrics and the status API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::IoUring => "io_uring",
            Self::Legacy => "legacy",
        }
    }
}

/// The running data plane. Dropping it stops every worker at once; call
/// [`ProxyHandle::shutdown`] for a graceful stop.
#[derive(Debug)]
pub struct ProxyHandle {
    local_addrs: Vec<SocketAddr>,
    driver: ActiveDriver,
    phase: watch::Sender<Phase>,
    threads: Vec<JoinHandle<()>>,
    stats: Vec<Arc<WorkerStats>>,
    access_log: Option<crate::access::Logger>,
    front: Arc<inferlb_core::FrontEnd>,
    /// The TLS listeners' live certificates.
    terminators: Vec<Arc<Terminator>>,
}

impl ProxyHandle {
    /// The address the workers listen on (port 0 resolved); the first,
    /// with several.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addrs[0]
    }

    /// Every address the workers listen on, in the configured order.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local_addrs
    }

    /// Reads every TLS listener's certificates and keys again (SIGHUP):
    /// new handshakes use the new ones, connections already open keep
    /// theirs. A listener whose new files are bad keeps its old ones; the
    /// errors name each file and why.
    pub fn reload_certificates(&self) -> Vec<String> {
        let mut errors = Vec::new();
        for terminator in &self.terminators {
            match terminator.reload() {
                Ok(()) => tracing::info!(listener = terminator.name(), "certificates reloaded"),
                Err(e) => errors.push(e),
            }
        }
        errors
    }

    /// The I/O driver the workers run on.
    pub fn io_driver(&self) -> ActiveDriver {
        self.driver
    }

    /// Per-worker counters, one entry per worker.
    pub fn worker_stats(&self) -> &[Arc<WorkerStats>] {
        &self.stats
    }

    /// Stops accepting; requests in flight get the drain timeout to finish.
    /// Returns at once; [`wait`](Self::wait) waits for the workers.
    pub fn shutdown(&self) {
        self.phase.send_replace(Phase::Draining);
    }

    /// Stops every worker now, whatever is in flight.
    pub fn stop(&self) {
        self.phase.send_replace(Phase::Stopped);
    }

    /// Waits until every worker has exited.
    pub fn wait(mut self) {
        self.join();
    }

    /// What clients saw per pool and model (the front-end metrics).
    pub fn front_end(&self) -> &Arc<inferlb_core::FrontEnd> {
        &self.front
    }

    /// Reopens the access log file before its next write (`SIGUSR1`, after
    /// logrotate moved it); nothing when there is no access log.
    pub fn reopen_access_log(&self) {
        if let Some(log) = &self.access_log {
            log.reopen();
        }
    }

    fn join(&mut self) {
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
        // The workers flushed their lines as they ended; the logger writes
        // them and ends once their senders are gone.
        if let Some(log) = &mut self.access_log {
            log.join();
        }
    }
}

impl Drop for ProxyHandle {
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            self.stop();
            self.join();
        }
    }
}

/// Logs the io_uring fallback once per process, not once per worker.
static FALLBACK_LOGGED: AtomicBool = AtomicBool::new(false);

/// Binds the listeners and starts the workers; returns once every worker is
/// accepting, or with the first worker's error.
pub fn start(config: &ProxyConfig, snapshots: Snapshots) -> io::Result<ProxyHandle> {
    // Every worker's listening sockets are opened here, each with
    // SO_REUSEPORT (the kernel spreads connections over them), and handed
    // over: no moment when a resolved port is free for someone else.
    let workers = config.worker_count();
    let mut local_addrs = Vec::with_capacity(config.listeners.len());
    let mut sockets: Vec<Vec<std::net::TcpListener>> = (0..workers)
        .map(|_| Vec::with_capacity(config.listeners.len()))
        .collect();
    for listener in &config.listeners {
        let mut addr = listener.address;
        if addr.port() != 0 {
            // A plain bind first: SO_REUSEPORT would let a second process
            // share the port silently.
            drop(bind_retrying(addr)?);
        }
        for worker_sockets in &mut sockets {
            let socket = listen_socket(addr)?;
            // Port 0: the first socket's port is everyone's.
            addr = socket.local_addr()?;
            worker_sockets.push(socket);
        }
        local_addrs.push(addr);
    }
    // Certificates are read once, here, and shared: a bad file stops the
    // start, naming it.
    let mut roles = Vec::with_capacity(config.listeners.len());
    for (index, listener) in config.listeners.iter().enumerate() {
        roles.push(crate::worker::ListenerRole {
            tls: Terminator::new(index, listener)
                .map_err(|e| io::Error::other(format!("listeners[{index}].tls: {e}")))?,
            h2: listener.allows_h2(),
        });
    }

    let cpus = thread::available_parallelism().map_or(1, |n| n.get());
    let (phase_tx, phase_rx) = watch::channel(Phase::Running);
    let (ready_tx, ready_rx) = mpsc::channel::<io::Result<ActiveDriver>>();
    let mut threads = Vec::with_capacity(workers);
    let mut stats = Vec::with_capacity(workers);
    let clients = config
        .limits
        .max_connections_per_client
        .map(inferlb_core::clients::ClientCounts::new);
    // Opened here, so a path that cannot be written fails the start.
    let (access_log, access_tx) = match &config.access_log {
        Some(settings) => {
            let (logger, tx) = crate::access::Logger::start(settings)?;
            (Some(logger), Some((tx, settings.format)))
        }
        None => (None, None),
    };
    let front = Arc::new(inferlb_core::FrontEnd::default());
    for (index, listeners) in sockets.into_iter().enumerate() {
        let worker_stats = Arc::new(WorkerStats::default());
        stats.push(Arc::clone(&worker_stats));
        let config = config.clone();
        let cell = Arc::clone(snapshots.cell());
        let phase = phase_rx.clone();
        let ready = ready_tx.clone();
        let clients = clients.clone();
        let worker_front = Arc::clone(&front);
        let roles = roles.clone();
        let access = access_tx
            .clone()
            .map(|(tx, format)| crate::access::worker_log(tx, format, Arc::clone(&worker_stats)));
        let thread = thread::Builder::new()
            .name(format!("inferlb-w{index}"))
            .spawn(move || {
                if config.cpu_pinning {
                    if let Err(e) = monoio::utils::bind_to_cpu_set([index % cpus]) {
                        tracing::warn!(worker = index, error = ?e, "cannot pin worker to a CPU");
                    }
                }
                let mut worker = Worker::new(index, config.clone(), cell, phase, worker_stats);
                worker.clients = clients;
                worker.access = access;
                worker.front = crate::front::FrontCache::new(worker_front);
                worker.listeners = roles;
                run_worker(&config, listeners, worker, ready);
            })?;
        threads.push(thread);
    }
    drop(ready_tx);
    // Only the workers hold senders: the logger ends after the last one.
    drop(access_tx);
    let mut handle = ProxyHandle {
        local_addrs,
        driver: ActiveDriver::IoUring,
        phase: phase_tx,
        threads,
        stats,
        access_log,
        front,
        terminators: roles.iter().filter_map(|r| r.tls.clone()).collect(),
    };
    let mut drivers = Vec::with_capacity(workers);
    for _ in 0..workers {
        match ready_rx.recv() {
            Ok(Ok(driver)) => drivers.push(driver),
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(io::Error::other("a worker exited during start-up")),
        }
    }
    if drivers.contains(&ActiveDriver::Legacy) {
        handle.driver = ActiveDriver::Legacy;
    }
    Ok(handle)
}

/// How long start-up waits for a listen address still in use, and how
/// often it tries again. Right after a `kill -9` the io_uring ring of the
/// dead process releases its sockets asynchronously, so the port is busy for
/// a moment; nginx retries its bind five times, half a second apart.
const BIND_RETRY_FOR: Duration = Duration::from_secs(5);
const BIND_RETRY_EVERY: Duration = Duration::from_millis(100);

/// A listening socket on `addr` with SO_REUSEPORT, for one worker.
fn listen_socket(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let open = || -> io::Result<std::net::TcpListener> {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )?;
        // The epoll driver needs it; io_uring does not mind.
        socket.set_nonblocking(true)?;
        socket.set_reuse_port(true)?;
        socket.set_reuse_address(true)?;
        socket.bind(&addr.into())?;
        socket.listen(BACKLOG)?;
        Ok(socket.into())
    };
    open().map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))
}

/// Binds `addr`, retrying for [`BIND_RETRY_FOR`] while it is in use.
fn bind_retrying(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let deadline = Instant::now() + BIND_RETRY_FOR;
    let mut logged = false;
    loop {
        match std::net::TcpListener::bind(addr) {
            Ok(listener) => return Ok(listener),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse && Instant::now() < deadline => {
                if !logged {
                    tracing::warn!(%addr, "listen address in use; retrying for up to 5 s");
                    logged = true;
                }
                thread::sleep(BIND_RETRY_EVERY);
            }
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("cannot listen on {addr}: {e}"),
                ))
            }
        }
    }
}

/// Builds the worker's runtime and serves on it until the phase says stop.
fn run_worker(
    config: &ProxyConfig,
    listeners: Vec<std::net::TcpListener>,
    worker: Worker,
    ready: mpsc::Sender<io::Result<ActiveDriver>>,
) {
    if config.io_driver != IoDriver::Legacy {
        let mut ring = io_uring::IoUring::builder();
        // Measured here: without these two flags the kernel interrupts the
        // worker's core about once per request to run completion work, which
        // costs a quarter to a third of the CPU per request and doubles p99.
        ring.setup_coop_taskrun().setup_single_issuer();
        let built = RuntimeBuilder::<IoUringDriver>::new()
            .with_entries(RING_ENTRIES)
            .uring_builder(ring)
            .enable_timer()
            .build()
            .or_else(|_| {
                // Kernels before 6.0 lack SINGLE_ISSUER; try a plain ring.
                RuntimeBuilder::<IoUringDriver>::new()
                    .with_entries(RING_ENTRIES)
                    .enable_timer()
                    .build()
            });
        match built {
            Ok(mut runtime) => {
                runtime.block_on(serve_on(listeners, worker, ready, ActiveDriver::IoUring));
                return;
            }
            Err(e) if config.io_driver == IoDriver::Uring => {
                let _ = ready.send(Err(io::Error::new(
                    e.kind(),
                    format!("cannot build an io_uring ring ({e}); raise RLIMIT_MEMLOCK or use --io-driver legacy"),
                )));
                return;
            }
            Err(e) => {
                if !FALLBACK_LOGGED.swap(true, Ordering::Relaxed) {
                    tracing::warn!(error = %e, "io_uring is unavailable; falling back to the epoll driver");
                }
            }
        }
    }
    match RuntimeBuilder::<LegacyDriver>::new().enable_timer().build() {
        Ok(mut runtime) => {
            runtime.block_on(serve_on(listeners, worker, ready, ActiveDriver::Legacy))
        }
        Err(e) => {
            let _ = ready.send(Err(e));
        }
    }
}

async fn serve_on(
    sockets: Vec<std::net::TcpListener>,
    worker: Worker,
    ready: mpsc::Sender<io::Result<ActiveDriver>>,
    driver: ActiveDriver,
) {
    let mut listeners = Vec::with_capacity(sockets.len());
    for socket in sockets {
        match TcpListener::from_std(socket) {
            Ok(listener) => listeners.push(listener),
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        }
    }
    let _ = ready.send(Ok(driver));
    drop(ready);
    let worker = Rc::new(worker);
    crate::connection::accept(Rc::clone(&worker), listeners).await;
    let closer = worker.h2_pool.borrow().closer();
    closer.close_all().await;
    if let Some(access) = &worker.access {
        access.flush();
    }
}
