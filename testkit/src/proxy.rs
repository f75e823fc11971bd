//! A TCP proxy to cut a dependency off (Postgres, SQS) and bring it back.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicI64, Ordering},
    },
    time::Duration,
};

use tokio::{net::TcpListener, task::JoinHandle};

/// A TCP proxy that can cut a dependency off (refusing and dropping
/// connections) and bring it back.
pub struct Proxy {
    pub addr: SocketAddr,
    down: Arc<AtomicBool>,
    generation: Arc<AtomicI64>,
    _task: JoinHandle<()>,
}

impl Proxy {
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let down = Arc::new(AtomicBool::new(false));
        let generation = Arc::new(AtomicI64::new(0));
        let (d, g) = (down.clone(), generation.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                if d.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let (d, g) = (d.clone(), g.clone());
                let my_gen = g.load(Ordering::SeqCst);
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    let copy = tokio::io::copy_bidirectional(&mut inbound, &mut outbound);
                    let cut = async {
                        while !d.load(Ordering::SeqCst) && g.load(Ordering::SeqCst) == my_gen {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    };
                    tokio::select! { _ = copy => {}, _ = cut => {} }
                });
            }
        });
        Self {
            addr,
            down,
            generation,
            _task: task,
        }
    }

    /// Cuts the dependency off (or brings it back); returns once open
    /// connections are cut.
    pub async fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
        self.generation.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn addr_of(url: &str) -> SocketAddr {
    let u = reqwest::Url::parse(url).unwrap();
    let host = u.host_str().unwrap();
    format!("{}:{}", host, u.port_or_known_default().unwrap())
        .parse()
        .unwrap()
}
