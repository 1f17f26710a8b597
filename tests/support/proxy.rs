//! A loopback TCP proxy for fault tests: forwards (optionally with a fixed latency), black-holes
//! (keeps every connection open but delivers nothing, in either direction, as a silent network
//! partition would), or cuts (closes every connection).

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

struct State {
    black_hole: AtomicBool,
    delay_us: AtomicU64,
    stop: AtomicBool,
    conns: Mutex<Vec<TcpStream>>,
}

/// A proxy on a free loopback port in front of `127.0.0.1:<target>`; stops on drop.
pub struct Proxy {
    port: u16,
    state: Arc<State>,
}

impl Proxy {
    /// Starts forwarding to `127.0.0.1:target`.
    pub fn start(target: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let port = listener.local_addr().expect("local_addr").port();
        listener.set_nonblocking(true).expect("nonblocking accept");
        let state = Arc::new(State {
            black_hole: AtomicBool::new(false),
            delay_us: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            conns: Mutex::new(Vec::new()),
        });
        let st = Arc::clone(&state);
        thread::spawn(move || {
            while !st.stop.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let _ = client.set_nonblocking(false);
                        let addr = SocketAddr::from(([127, 0, 0, 1], target));
                        let Ok(server) = TcpStream::connect(addr) else {
                            continue;
                        };
                        let _ = client.set_nodelay(true);
                        let _ = server.set_nodelay(true);
                        {
                            let mut conns = st.conns.lock().expect("conns");
                            conns.push(client.try_clone().expect("clone"));
                            conns.push(server.try_clone().expect("clone"));
                        }
                        pipe(
                            &st,
                            client.try_clone().expect("clone"),
                            server.try_clone().expect("clone"),
                        );
                        pipe(&st, server, client);
                    }
                    Err(_) => thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        Self { port, state }
    }

    /// The proxy's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Delivers every byte `delay` after it arrived (0: at once), preserving order.
    pub fn set_delay(&self, delay: Duration) {
        let us = u64::try_from(delay.as_micros()).unwrap_or(u64::MAX);
        self.state.delay_us.store(us, Ordering::SeqCst);
    }

    /// Stops delivering anything, in both directions, without closing a connection.
    pub fn black_hole(&self) {
        self.state.black_hole.store(true, Ordering::SeqCst);
    }

    /// Delivers again (bytes that arrived while black-holed are gone).
    pub fn forward(&self) {
        self.state.black_hole.store(false, Ordering::SeqCst);
    }

    /// Closes every connection opened so far.
    pub fn cut(&self) {
        for c in self.state.conns.lock().expect("conns").drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        self.cut();
    }
}

/// Copies `from` to `to` through a queue, so a latency delays bytes without throttling them.
fn pipe(state: &Arc<State>, mut from: TcpStream, mut to: TcpStream) {
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    let st = Arc::clone(state);
    thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if st.black_hole.load(Ordering::SeqCst) {
                        continue;
                    }
                    let due =
                        Instant::now() + Duration::from_micros(st.delay_us.load(Ordering::SeqCst));
                    if tx.send((due, buf[..n].to_vec())).is_err() {
                        break;
                    }
                }
            }
        }
    });
    thread::spawn(move || {
        for (due, bytes) in rx {
            let now = Instant::now();
            if due > now {
                thread::sleep(due - now);
            }
            if to.write_all(&bytes).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Both);
    });
}
