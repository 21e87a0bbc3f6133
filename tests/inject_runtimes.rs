//! End-to-end tests of `cartinject` against containers of other runtimes than Docker: real
//! Podman containers (found through Podman's state files, and through its API socket), real
//! containerd tasks started with `ctr` (in `default` and in `k8s.io` with the CRI plugin's
//! annotations), the `/proc/*/cgroup` fallback for both, and a name that two runtimes share.
//! Needs root, Docker, Podman (with runc) and a standalone containerd, which `tests/run`
//! installs and starts. CRI-O cannot be installed here: its resolver is unit-tested against
//! fixture state directories (`injector/src/target/crio.rs`).
//!
//! Every test uses its own copy of the fixture image and its own containers, and ends by
//! checking that no loop device is backed by its image and its containers have no
//! `/dev/crashcart` left.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crashcart_tests::runtimes::*;
use crashcart_tests::*;

/// What `sh -c 'echo $CRASHCART_TARGET; hostname'` says inside `target`: (label, hostname).
fn label_and_host(img: &TestImage, target: &str, env: &[(&str, &str)]) -> (String, String) {
    let mut cmd = inject(
        img,
        target,
        &[
            "sh",
            "-c",
            "echo $CRASHCART_TARGET; cat /proc/sys/kernel/hostname",
        ],
    );
    for (k, v) in env {
        cmd.env(k, v);
    }
    let text = ok(&mut cmd);
    let mut lines = text.lines().map(str::to_string);
    (
        lines.next().unwrap_or_default(),
        lines.next().unwrap_or_default(),
    )
}

/// A storage.conf naming an empty store, so that Podman's state files find nothing.
fn empty_store(img: &TestImage) -> std::path::PathBuf {
    let conf = img.sibling("storage.conf");
    let graph = img.sibling("empty-graph");
    std::fs::create_dir_all(&graph).expect("mkdir");
    std::fs::write(
        &conf,
        format!(
            "[storage]\ndriver = \"overlay\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n",
            graph.display(),
            graph.display()
        ),
    )
    .expect("write storage.conf");
    conf
}

#[test]
fn podman_containers_by_name_id_prefix_and_forced_kind() {
    require_root();
    let c = PodmanContainer::start("podman-names", &[]);
    let img = TestImage::fixture();
    // No `podman system service` runs: these come from Podman's state files.
    let no_api = [("CONTAINER_HOST", "unix:///nonexistent/podman.sock")];
    for target in [
        c.name.clone(),
        format!("podman:{}", c.name),
        c.id.clone(),
        c.id[..12].to_string(),
        format!("pid:{}", c.pid),
    ] {
        let (label, host) = label_and_host(&img, &target, &no_api);
        assert_eq!(
            host,
            c.id[..12],
            "{target}: not the container's UTS namespace"
        );
        if !target.starts_with("pid:") {
            assert_eq!(label, c.name, "{target}");
        }
    }

    // -m, then `podman exec` of the image's tools, then -u.
    let out = ok(cartinject()
        .arg("-m")
        .arg(&img.path)
        .arg(&c.name)
        .env("CONTAINER_HOST", "unix:///nonexistent/podman.sock"));
    assert!(out.contains("mounted"), "{out}");
    let text = c.exec(&["/dev/crashcart/bin/busybox", "cat", "/proc/1/cmdline"]);
    assert!(text.contains("sleep"), "{text}");
    ok(cartinject().arg("-u").arg(&c.name));
    c.assert_clean();
    img.assert_no_loop_device();

    // A stopped Podman container: a clear error, not a stale PID.
    let stopped = PodmanContainer::start("podman-stopped", &[]);
    ok(Command::new("podman").args(["stop", "-t", "0", &stopped.name]));
    let out = output(&mut inject(&img, &stopped.name, &["true"]));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert!(
        err.contains(&format!("container {} is not running", stopped.name))
            && err.contains("podman start"),
        "{err}"
    );
    img.assert_no_loop_device();
}

/// `podman system service` on a socket of the test's own, stopped on drop.
struct PodmanService {
    child: Child,
    socket: std::path::PathBuf,
}

impl PodmanService {
    fn start(img: &TestImage) -> PodmanService {
        let socket = img.sibling("podman.sock");
        let child = Command::new("podman")
            .args(["system", "service", "--time=0"])
            .arg(format!("unix://{}", socket.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run podman system service");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            assert!(
                Instant::now() < deadline,
                "podman system service did not listen on {}",
                socket.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        PodmanService { child, socket }
    }
}

impl Drop for PodmanService {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn podman_through_its_api_socket() {
    require_root();
    let c = PodmanContainer::start("podman-api", &[]);
    let img = TestImage::fixture();
    let service = PodmanService::start(&img);
    let host = format!("unix://{}", service.socket.display());
    // With the state files hidden, only the API can know the name.
    let conf = empty_store(&img);
    let env = [
        ("CONTAINER_HOST", host.as_str()),
        ("CONTAINERS_STORAGE_CONF", conf.to_str().expect("utf-8")),
    ];
    let (label, hostname) = label_and_host(&img, &c.name, &env);
    assert_eq!(
        (label.as_str(), hostname.as_str()),
        (c.name.as_str(), &c.id[..12])
    );
    let (label, _) = label_and_host(&img, &format!("podman:{}", &c.id[..10]), &env);
    assert_eq!(label, c.name);

    // Without the API and without the state files, the name is unknown...
    let env = [
        ("CONTAINER_HOST", "unix:///nonexistent/podman.sock"),
        ("CONTAINERS_STORAGE_CONF", conf.to_str().expect("utf-8")),
    ];
    let mut cmd = inject(&img, &format!("podman:{}", c.name), &["true"]);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = output(&mut cmd);
    assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no container matches"),
        "{}",
        stderr(&out)
    );
    // ... but the /proc/*/cgroup fallback still finds it by ID.
    let (label, hostname) = label_and_host(&img, &c.id[..16], &env);
    assert_eq!(
        (label.as_str(), hostname.as_str()),
        (&c.id[..12], &c.id[..12])
    );
    let (label, _) = label_and_host(&img, &format!("cgroup:{}", &c.id[..16]), &env);
    assert_eq!(label, c.id[..12]);
    img.assert_no_loop_device();
    c.assert_clean();
}

#[test]
fn containerd_tasks_by_id_namespace_and_kubernetes_name() {
    require_root();
    let img = TestImage::fixture();
    let plain = CtrTask::start("default", &unique("ctr-plain"), &[]);
    let pod = unique("pod");
    let app = unique("app");
    let cri = CtrTask::start(
        "k8s.io",
        &hex_id("ctr-cri"),
        &[
            ("io.kubernetes.cri.container-type", "container"),
            ("io.kubernetes.cri.container-name", &app),
            ("io.kubernetes.cri.sandbox-name", &pod),
        ],
    );
    // ctr gives a task a network namespace of its own (only loopback), as --network none.
    let net = |pid: i32| std::fs::read_link(format!("/proc/{pid}/ns/net")).expect("netns");
    assert_ne!(
        net(plain.pid),
        std::fs::read_link("/proc/self/ns/net").expect("netns")
    );

    for (target, task, label) in [
        (plain.id.clone(), &plain, plain.id.clone()),
        (format!("containerd:{}", plain.id), &plain, plain.id.clone()),
        (
            format!("containerd:default/{}", plain.id),
            &plain,
            plain.id.clone(),
        ),
        (app.clone(), &cri, app.clone()),
        (format!("{pod}/{app}"), &cri, app.clone()),
        (format!("containerd:k8s.io/{}", cri.id), &cri, app.clone()),
        (cri.id[..14].to_string(), &cri, app.clone()),
    ] {
        let text = ok(&mut inject(
            &img,
            &target,
            &[
                "sh",
                "-c",
                "echo $CRASHCART_TARGET; cat /proc/1/cmdline; echo; ls /sys/class/net",
            ],
        ));
        let mut lines = text.lines();
        assert_eq!(lines.next(), Some(label.as_str()), "{target}: {text}");
        assert!(text.contains("sleep"), "{target}: {text}");
        // The task's own network namespace: loopback only.
        assert_eq!(lines.last(), Some("lo"), "{target}: {text}");
        task.assert_clean();
    }

    // The cgroup fallback finds a task by its 64-hex ID (ctr puts it in /k8s.io/ID).
    let text = ok(&mut inject(
        &img,
        &format!("cgroup:{}", &cri.id[..20]),
        &["sh", "-c", "echo $CRASHCART_TARGET"],
    ));
    assert_eq!(text.trim(), &cri.id[..12]);

    // -m and -u into a containerd task.
    ok(cartinject().arg("-m").arg(&img.path).arg(&app));
    assert_eq!(crashcart_mounts(cri.pid).len(), 1);
    let text = ok(Command::new("ctr").args([
        "-n",
        "k8s.io",
        "task",
        "exec",
        "--exec-id",
        &unique("exec"),
        &cri.id,
        "/dev/crashcart/bin/busybox",
        "echo",
        "ctr-exec-ok",
    ]));
    assert_eq!(text.trim(), "ctr-exec-ok");
    ok(cartinject().arg("-u").arg(&app));
    cri.assert_clean();
    img.assert_no_loop_device();

    // Unknown names list containerd's tasks with their namespace (and pod).
    let out = output(&mut inject(&img, "containerd:cc-no-such-task", &["true"]));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert!(
        err.contains(&format!("{} (containerd default)", &plain.id[..12]))
            && err.contains(&format!("{app} (containerd k8s.io pod {pod}")),
        "{err}"
    );
    img.assert_no_loop_device();
}

#[test]
fn a_name_two_runtimes_share_is_ambiguous_until_forced() {
    require_root();
    let img = TestImage::fixture();
    let name = unique("shared");
    let d = Container::start_named(&name, fat_image());
    // Podman takes the same name (its own namespace of names).
    let p = PodmanContainer::start_named(&name, podman_image(), &[]);
    let out = output(&mut inject(&img, &name, &["true"]));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert!(err.contains("matches more than one container"), "{err}");
    assert!(
        err.contains(&format!("{name} (docker {})", &d.id[..12]))
            && err.contains(&format!("{name} (podman {})", &p.id[..12])),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    let (_, host) = label_and_host(&img, &format!("docker:{name}"), &[]);
    assert_eq!(host, d.id[..12]);
    let (_, host) = label_and_host(&img, &format!("podman:{name}"), &[]);
    assert_eq!(host, p.id[..12]);
    // Docker's container is also a task of Docker's own containerd, in namespace moby.
    let (_, host) = label_and_host(&img, &format!("containerd:moby/{}", &d.id[..12]), &[]);
    assert_eq!(host, d.id[..12]);
    img.assert_no_loop_device();
    d.assert_clean();
}
