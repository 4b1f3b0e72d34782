//! The services the scale-out engine runs on, private to one test: a
//! `redis-server` of its own (AOF `appendfsync always`, its files in a
//! temporary directory, a free port), killed when dropped; and a RabbitMQ
//! vhost of its own on the machine's broker, deleted when dropped.
//!
//! A machine without `redis-server` or `rabbitmqctl` skips the test with a
//! printed message (each constructor answers `None` then), except under CI,
//! where it fails naming what to install ([`super::missing`]).

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// How long a service may take to answer after it was started.
const START_TIMEOUT: Duration = Duration::from_secs(20);

pub struct PrivateRedis {
    child: Child,
    pub port: u16,
    dir: TempDir,
}

impl PrivateRedis {
    /// A durable Redis (AOF, fsync on every write, no eviction) on a free
    /// port; `None`, with a message, when `redis-server` is not installed.
    pub fn start() -> Option<Self> {
        if !installed("redis-server") {
            super::missing("redis-server", "apt-get install redis-server");
            return None;
        }
        let dir = TempDir::new().expect("a temporary directory");
        let port = free_port();
        let child = spawn_redis(&dir, port);
        let redis = Self { child, port, dir };
        wait_for_port(port, "the private redis-server");
        Some(redis)
    }

    /// SIGKILL: whatever Redis acknowledged is in its AOF already.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts Redis again on the same port and files, after [`Self::kill`].
    pub fn restart(&mut self) {
        self.child = spawn_redis(&self.dir, self.port);
        wait_for_port(self.port, "the restarted redis-server");
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

fn spawn_redis(dir: &TempDir, port: u16) -> Child {
    Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--appendonly", "yes", "--appendfsync", "always"])
        .args(["--maxmemory-policy", "noeviction", "--save", ""])
        .arg("--dir")
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server starts")
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A fresh vhost on the machine's RabbitMQ (127.0.0.1:5672, guest), deleted on drop.
pub struct Vhost {
    pub name: String,
}

impl Vhost {
    /// `None`, with a message, when `rabbitmqctl` is missing or the broker
    /// does not answer.
    pub fn create() -> Option<Self> {
        if !installed("rabbitmqctl") {
            super::missing("rabbitmqctl", "apt-get install rabbitmq-server");
            return None;
        }
        if TcpStream::connect(("127.0.0.1", 5672)).is_err() {
            super::missing("RabbitMQ on 127.0.0.1:5672", "rabbitmq-server -detached");
            return None;
        }
        let vhost = Self::named();
        vhost.open();
        Some(vhost)
    }

    /// A vhost name of its own, not created yet: RabbitMQ refuses
    /// connections to it until [`Vhost::open`], as if it were down.
    pub fn reserve() -> Option<Self> {
        if !installed("rabbitmqctl") || TcpStream::connect(("127.0.0.1", 5672)).is_err() {
            super::missing(
                "rabbitmqctl or RabbitMQ on 127.0.0.1:5672",
                "apt-get install rabbitmq-server; rabbitmq-server -detached",
            );
            return None;
        }
        Some(Self::named())
    }

    /// Creates the vhost and lets guest in.
    pub fn open(&self) {
        rabbitmqctl(&["add_vhost", &self.name]);
        rabbitmqctl(&[
            "set_permissions",
            "-p",
            &self.name,
            "guest",
            ".*",
            ".*",
            ".*",
        ]);
    }

    /// Deletes the vhost with every queue and message in it: its
    /// connections are closed, and [`Vhost::open`] makes it again, empty (a
    /// broker that lost its data).
    pub fn delete(&self) {
        rabbitmqctl(&["delete_vhost", &self.name]);
    }

    fn named() -> Self {
        let name = format!("herald-test-{}-{}", std::process::id(), free_port());
        Self { name }
    }

    pub fn amqp_url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:5672/{}", self.name)
    }
}

impl Drop for Vhost {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl")
            .args(["delete_vhost", &self.name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// The flags that put a Herald node on these services.
pub fn scaleout_flags(redis: &str, vhost: &Vhost) -> Vec<String> {
    vec![
        "--backend".into(),
        "scaleout".into(),
        "--redis-url".into(),
        redis.into(),
        "--amqp-url".into(),
        vhost.amqp_url(),
    ]
}

fn rabbitmqctl(args: &[&str]) {
    let output = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .expect("rabbitmqctl runs");
    assert!(
        output.status.success(),
        "rabbitmqctl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn installed(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// A loopback port free now (the service binds it a moment later).
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().expect("its address").port()
}

fn wait_for_port(port: u16, what: &str) {
    let deadline = Instant::now() + START_TIMEOUT;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} never listened on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A RabbitMQ node of its own (its node name, AMQP and distribution ports,
/// data and logs in a temporary directory owned by the `rabbitmq` user, as
/// Debian's wrapper runs the node as that user), for the tests that kill the
/// broker. Killed on drop.
pub struct PrivateRabbit {
    wrapper: Child,
    dir: TempDir,
    pub port: u16,
    dist_port: u16,
    node: String,
}

impl PrivateRabbit {
    /// `None`, with a message, when `rabbitmq-server` is not installed.
    pub fn start() -> Option<Self> {
        if !installed("rabbitmq-server") {
            super::missing("rabbitmq-server", "apt-get install rabbitmq-server");
            return None;
        }
        let dir = TempDir::new().expect("a temporary directory");
        let port = free_port();
        let dist_port = free_port();
        let node = format!("herald-t{port}@localhost");
        std::fs::write(
            dir.path().join("rabbitmq.conf"),
            format!("listeners.tcp.local = 127.0.0.1:{port}\n"),
        )
        .expect("the node's config");
        std::fs::write(dir.path().join("enabled_plugins"), "[].\n").expect("no plugins");
        let owned = Command::new("chown")
            .args(["-R", "rabbitmq:rabbitmq"])
            .arg(dir.path())
            .status()
            .expect("chown runs");
        assert!(owned.success(), "the node's directory given to rabbitmq");
        let wrapper = spawn_rabbit(&dir, port, dist_port, &node);
        let rabbit = Self {
            wrapper,
            dir,
            port,
            dist_port,
            node,
        };
        wait_for_port(port, "the private RabbitMQ");
        Some(rabbit)
    }

    pub fn amqp_url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// SIGKILL to the broker itself (not its wrapper script).
    pub fn kill(&mut self) {
        let pid_file = self.dir.path().join("pid");
        let pid = std::fs::read_to_string(&pid_file).expect("the node wrote its pid");
        let pid: libc::pid_t = pid.trim().parse().expect("a pid");
        // SAFETY: kill(2) on the broker this test started.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        let _ = self.wrapper.kill();
        let _ = self.wrapper.wait();
        let deadline = Instant::now() + START_TIMEOUT;
        while TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
            assert!(
                Instant::now() < deadline,
                "the broker still answers after SIGKILL"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = std::fs::remove_file(pid_file);
    }

    /// Starts the broker again on its port and data, after [`Self::kill`].
    pub fn restart(&mut self) {
        self.wrapper = spawn_rabbit(&self.dir, self.port, self.dist_port, &self.node);
        wait_for_port(self.port, "the restarted RabbitMQ");
    }
}

fn spawn_rabbit(dir: &TempDir, port: u16, dist_port: u16, node: &str) -> Child {
    let path = dir.path();
    Command::new("rabbitmq-server")
        .env("RABBITMQ_CONFIG_FILE", path.join("rabbitmq.conf"))
        .env(
            "RABBITMQ_ENABLED_PLUGINS_FILE",
            path.join("enabled_plugins"),
        )
        .env("RABBITMQ_NODENAME", node)
        .env("RABBITMQ_NODE_PORT", port.to_string())
        .env("RABBITMQ_DIST_PORT", dist_port.to_string())
        .env("RABBITMQ_MNESIA_BASE", path.join("mnesia"))
        .env("RABBITMQ_LOG_BASE", path.join("log"))
        .env("RABBITMQ_PID_FILE", path.join("pid"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("rabbitmq-server starts")
}

impl Drop for PrivateRabbit {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(self.dir.path().join("pid"))
            && let Ok(pid) = pid.trim().parse::<libc::pid_t>()
        {
            // SAFETY: kill(2) on the broker this test started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let _ = self.wrapper.kill();
        let _ = self.wrapper.wait();
    }
}
