//! End-to-end tests of `cartinject` against every kind of container: user-namespaced (Podman
//! `--userns=auto`), a read-only root, a read-only `/dev`, a pids limit; sessions that leave
//! no trace in the container, also after `kill -9`; and images that are erofs, squashfs or a
//! GPT disk. Needs root, Docker, Podman with subuid ranges for `containers`, mkfs.erofs,
//! mksquashfs, sfdisk and mke2fs, which `tests/run` installs and sets up.
//!
//! Each test asserts only about what it made: its image's loop devices, its containers' mount
//! tables (compared as snapshots, mount by mount, before, during and after), and the files of
//! its containers' `/dev`.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crashcart_tests::runtimes::*;
use crashcart_tests::*;

const LONG: Duration = Duration::from_secs(30);

/// Starts the fat image under Docker as `cc-<test>-<pid>` with `--network none` and `args`.
fn docker_run(test: &str, args: &[&str]) -> Container {
    require_root();
    Container::start_with(&unique(test), fat_image(), args)
}

/// The entries of a container's `/dev` as its processes see them: name → (mode, uid, gid,
/// rdev, symlink target).
fn dev_view(pid: i32) -> BTreeMap<String, (u32, u32, u32, u64, Option<PathBuf>)> {
    let dev = PathBuf::from(format!("/proc/{pid}/root/dev"));
    std::fs::read_dir(&dev)
        .expect("read the container's /dev")
        .flatten()
        .map(|e| {
            let meta = std::fs::symlink_metadata(e.path()).expect("stat");
            let link = std::fs::read_link(e.path()).ok();
            (
                e.file_name().to_string_lossy().into_owned(),
                (meta.mode(), meta.uid(), meta.gid(), meta.rdev(), link),
            )
        })
        .collect()
}

/// Watches a container's mount table from a thread until dropped: every mount that existed at
/// the start must keep its read-only flag, and every new one must be read-only. The
/// violations it saw are returned by [`Watch::finish`].
struct Watch {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<(usize, Vec<String>)>>,
}

impl Watch {
    fn start(pid: i32) -> Watch {
        let before = mount_table(pid);
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut seen = Vec::new();
            let mut samples = 0;
            while !flag.load(Ordering::Relaxed) {
                samples += 1;
                for (id, m) in mount_table(pid) {
                    let bad = match before.get(&id) {
                        Some(old) => old.read_only() != m.read_only(),
                        None => !m.read_only(),
                    };
                    if bad {
                        let line = format!("mount {id} at {} became {}", m.point, m.options);
                        if !seen.contains(&line) {
                            seen.push(line);
                        }
                    }
                }
                std::thread::yield_now();
            }
            (samples, seen)
        });
        Watch {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops watching; asserts it looked at least once and saw nothing wrong.
    fn finish(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let (samples, seen) = self.thread.take().expect("thread").join().expect("watcher");
        assert!(samples > 0, "the mount table was never sampled");
        assert!(seen.is_empty(), "{seen:?}");
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[test]
fn user_namespaced_podman_container_gets_an_idmapped_image_and_a_root_shell() {
    require_root();
    let c = PodmanContainer::start("userns", &["--userns=auto"]);
    let host_root = assert_user_namespaced(c.pid);
    let img = TestImage::fixture();
    let text = ok(&mut inject(
        &img.path,
        &c.name,
        &[
            "sh",
            "-c",
            "id -u; id -g; stat -c %u:%g /dev/crashcart/bin/busybox /dev/crashcart /dev; cat /proc/self/uid_map",
        ],
    ));
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(&lines[..5], ["0", "0", "0:0", "0:0", "0:0"], "{text}");
    assert!(
        lines[5].contains(&host_root.to_string()),
        "not in the container's user namespace: {text}"
    );
    c.assert_clean();
    img.assert_no_loop_device();

    // -m creates /dev/crashcart in the container's own /dev (EOVERFLOW unless made with the
    // container root's ids) and the image is idmapped there too.
    let out = ok(cartinject().arg("-m").arg(&img.path).arg(&c.name));
    assert!(out.contains("mounted"), "{out}");
    let text = c.exec(&[
        "/dev/crashcart/bin/busybox",
        "stat",
        "-c",
        "%u:%g",
        "/dev/crashcart",
        "/dev/crashcart/bin/bash",
    ]);
    assert_eq!(text.lines().collect::<Vec<_>>(), ["0:0", "0:0"], "{text}");
    ok(cartinject().arg("-u").arg(&c.name));
    c.assert_clean();
    img.assert_no_loop_device();
}

#[test]
fn without_an_idmap_a_user_namespaced_session_says_so_and_still_works() {
    require_root();
    let c = PodmanContainer::start("userns-noidmap", &["--userns=auto"]);
    let img = TestImage::fixture();
    // mount(2) (the legacy path) cannot idmap: the files show as nobody, and it says so.
    let out = output(
        inject(
            &img.path,
            &c.name,
            &[
                "sh",
                "-c",
                "id -u; stat -c %u /dev/crashcart/bin/busybox; busybox echo runs",
            ],
        )
        .env("CARTINJECT_LEGACY_MOUNT", "1"),
    );
    let (text, err) = (stdout(&out), stderr(&out));
    assert!(out.status.success(), "{:?}: {text} {err}", out.status);
    assert!(
        err.contains("warning:") && err.contains("cannot idmap"),
        "{err}"
    );
    assert_eq!(
        text.lines().collect::<Vec<_>>(),
        ["0", "65534", "runs"],
        "{text}"
    );
    c.assert_clean();
    img.assert_no_loop_device();
}

#[test]
fn read_only_root_filesystem_sessions_and_mount() {
    let c = docker_run("roroot", &["--read-only"]);
    let img = TestImage::fixture();
    let before = assert_read_only_root(c.pid);
    let watch = Watch::start(c.pid);

    let text = ok(&mut inject(
        &img.path,
        &c.name,
        &["sh", "-c", "touch /x 2>&1; ls /dev/crashcart/bin/busybox"],
    ));
    assert!(text.contains("Read-only file system"), "{text}");
    assert!(text.contains("/dev/crashcart/bin/busybox"), "{text}");
    assert_eq!(
        mount_table(c.pid),
        before,
        "a session changed the container's mounts"
    );

    ok(cartinject().arg("-m").arg(&img.path).arg(&c.name));
    let text = c.exec(&["/dev/crashcart/bin/busybox", "echo", "exec-ok"]);
    assert_eq!(text.trim(), "exec-ok");
    ok(cartinject().arg("-u").arg(&c.name));
    watch.finish();
    assert_eq!(
        mount_table(c.pid),
        before,
        "-u left the mount table changed"
    );
    c.assert_clean();
    img.assert_no_loop_device();
}

#[test]
fn read_only_dev_sessions_and_mount_without_writing_there() {
    let dev = ReadOnlyDev::new();
    let host_files = dev.listing();
    let c = docker_run("rodev", &["--read-only", "--mount", &dev.mount_arg()]);
    let img = TestImage::fixture();
    let before = mount_table(c.pid);
    let dev_mount = before
        .values()
        .rfind(|m| m.point == "/dev")
        .expect("a /dev mount");
    assert!(
        dev_mount.read_only(),
        "/dev is not read-only: {dev_mount:?}"
    );
    let view = dev_view(c.pid);
    assert!(!view.contains_key("crashcart"));
    let watch = Watch::start(c.pid);

    // A session: its /dev is read-only too, and has the tools.
    let text = ok(&mut inject(
        &img.path,
        &c.name,
        &[
            "sh",
            "-c",
            "touch /dev/x 2>&1; echo data > /dev/null && echo null-ok; ls /dev/crashcart/bin/busybox",
        ],
    ));
    assert!(text.contains("Read-only file system"), "{text}");
    assert!(
        text.contains("null-ok") && text.contains("/dev/crashcart/bin/busybox"),
        "{text}"
    );
    assert_eq!(mount_table(c.pid), before);

    // -m adds /dev/crashcart without writing to the read-only /dev.
    let out = ok(cartinject().arg("-m").arg(&img.path).arg(&c.name));
    assert!(out.contains("read-only"), "{out}");
    let text = c.exec(&[
        "/dev/crashcart/bin/busybox",
        "sh",
        "-c",
        "ls /dev; touch /dev/y 2>&1; echo x > /dev/null && echo null-ok",
    ]);
    for name in ["crashcart", "null", "zero", "urandom", "fd"] {
        assert!(text.lines().any(|l| l == name), "no /dev/{name}: {text}");
    }
    assert!(
        text.contains("Read-only file system") && text.contains("null-ok"),
        "{text}"
    );
    let during = dev_view(c.pid);
    for (name, entry) in &view {
        assert_eq!(during.get(name), Some(entry), "/dev/{name} changed");
    }
    assert_eq!(
        dev.listing(),
        host_files,
        "the bound /dev directory was written to"
    );
    let list = ok(cartinject().args(["--list", "--json"]));
    assert!(
        list.contains(&img.path.to_string_lossy().into_owned()),
        "{list}"
    );

    let out = ok(cartinject().arg("-u").arg(&c.name));
    assert!(out.contains("unmounted"), "{out}");
    watch.finish();
    assert_eq!(
        mount_table(c.pid),
        before,
        "-u left the mount table changed"
    );
    assert_eq!(dev_view(c.pid), view);
    assert_eq!(dev.listing(), host_files);
    c.assert_clean();
    img.assert_no_loop_device();
}

/// The PIDs (in the host) of the processes in `pid`'s PID namespace.
fn processes_in_pid_ns_of(pid: i32) -> Vec<i32> {
    let ns = std::fs::read_link(format!("/proc/{pid}/ns/pid")).expect("pid ns");
    let mut found: Vec<i32> = std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|p| {
            std::fs::read_link(format!("/proc/{p}/ns/pid"))
                .ok()
                .as_ref()
                == Some(&ns)
        })
        .collect();
    found.sort_unstable();
    found
}

#[test]
fn sessions_leave_no_trace_even_after_kill_9() {
    let c = docker_run("notrace", &[]);
    let img = TestImage::fixture();
    let mounts = mount_table(c.pid);
    let view = dev_view(c.pid);
    let processes = processes_in_pid_ns_of(c.pid);

    for kill in [false, true] {
        let (mut session, _out, line) = spawn_until_first_line(
            inject(
                &img.path,
                &c.name,
                &["sh", "-c", "echo ready; read x; echo bye"],
            )
            .stdin(Stdio::piped()),
        );
        assert_eq!(line.trim(), "ready");
        // While it runs, the workload sees nothing of it in its mounts or its /dev.
        assert_eq!(
            mount_table(c.pid),
            mounts,
            "the session shows in the container's mounts"
        );
        assert_eq!(
            dev_view(c.pid),
            view,
            "the session shows in the container's /dev"
        );
        assert_eq!(img.loop_devices().len(), 1);
        if kill {
            session.kill().expect("kill -9 cartinject");
            session.wait().expect("wait");
        } else {
            drop(session.stdin.take());
            assert!(wait_with_timeout(&mut session, LONG).success());
        }
        // Everything of the session goes: its processes, its mount, its loop device.
        img.assert_no_loop_device();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while processes_in_pid_ns_of(c.pid) != processes {
            assert!(
                std::time::Instant::now() < deadline,
                "session processes left in the container (kill: {kill}): {:?}",
                processes_in_pid_ns_of(c.pid)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(mount_table(c.pid), mounts);
        assert_eq!(dev_view(c.pid), view);
        c.assert_clean();
    }
}

#[test]
fn sessions_join_the_containers_cgroups_and_its_pids_limit() {
    let limited = docker_run("pids", &["--pids-limit", "8"]);
    let free = docker_run("nopids", &[]);
    let img = TestImage::fixture();

    let text = ok(&mut inject(
        &img.path,
        &limited.name,
        &[
            "sh",
            "-c",
            "cat /proc/self/cgroup; echo ===; cat /proc/1/cgroup",
        ],
    ));
    let (own, init) = text.split_once("===\n").expect("two parts");
    assert!(!own.trim().is_empty(), "{text}");
    assert_eq!(own, init, "the session is not in the container's cgroups");
    assert!(
        own.lines().any(|l| l.contains(&limited.id)),
        "no cgroup of the container named: {own}"
    );

    // Forking 20 sleeps: refused past the container's limit, fine without one.
    let forks = "i=0; while [ $i -lt 20 ]; do sleep 5 & i=$((i+1)); echo started $i; done";
    let out = output(&mut inject(&img.path, &limited.name, &["sh", "-c", forks]));
    let (text, err) = (stdout(&out), stderr(&out));
    assert!(
        !out.status.success(),
        "20 forks under --pids-limit 8: {text}"
    );
    assert!(err.contains("can't fork"), "{err}");
    let started = text.lines().count();
    assert!(started < 8, "{started} sleeps started under --pids-limit 8");
    let text = ok(&mut inject(&img.path, &free.name, &["sh", "-c", forks]));
    assert_eq!(text.lines().last(), Some("started 20"), "{text}");
    img.assert_no_loop_device();
    limited.assert_clean();
    free.assert_clean();
}

/// The mountinfo line of `/dev/crashcart` as a session in `target` sees it.
fn session_mount_line(image: &Path, target: &str) -> String {
    ok(&mut inject(
        image,
        target,
        &[
            "sh",
            "-c",
            "grep ' /dev/crashcart ' /proc/self/mountinfo; busybox echo runs",
        ],
    ))
}

#[test]
fn erofs_squashfs_and_gpt_disk_images_in_a_real_container() {
    let c = docker_run("formats", &[]);
    let img = TestImage::fixture();
    let erofs = img.sibling("tools.erofs");
    make_erofs(&erofs);
    let squashfs = img.sibling("tools.sqfs");
    make_squashfs(&squashfs);
    let gpt = img.sibling("disk.img");
    let (start, size) = make_gpt(&gpt, Some("crashcart"));
    assert!(start > 0);

    for (image, fstype) in [(&erofs, "erofs"), (&squashfs, "squashfs"), (&gpt, "ext4")] {
        let text = session_mount_line(image, &c.name);
        assert!(
            text.contains(&format!(" - {fstype} /dev/loop")) && text.contains("runs"),
            "{}: {text}",
            image.display()
        );
        assert_no_loop_device(image);

        ok(cartinject().arg("-m").arg(image).arg(&c.name));
        let geometry = loop_geometry(image);
        assert_eq!(geometry.len(), 1, "{geometry:?}");
        if fstype == "ext4" {
            // The GPT disk's loop device covers exactly its crashcart partition.
            assert_eq!(
                (geometry[0].1, geometry[0].2),
                (start, size),
                "{geometry:?}"
            );
        } else {
            assert_eq!(geometry[0].1, 0);
        }
        let text = c.exec(&["/dev/crashcart/bin/busybox", "echo", "exec-ok"]);
        assert_eq!(text.trim(), "exec-ok");
        ok(cartinject().arg("-u").arg(&c.name));
        c.assert_clean();
        assert_no_loop_device(image);
    }
}

#[test]
fn a_gpt_disk_without_a_crashcart_partition_is_refused() {
    let c = docker_run("gptnone", &[]);
    let img = TestImage::fixture();
    let gpt = img.sibling("nothing.img");
    make_gpt(&gpt, None);
    for mount in [false, true] {
        let mut cmd = cartinject();
        if mount {
            cmd.arg("-m").arg(&gpt).arg(&c.name);
        } else {
            cmd.arg(&gpt).arg(&c.name).args(["--", "true"]);
        }
        let out = output(&mut cmd);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(125), "{err}");
        assert!(
            err.contains("has no GPT partition named `crashcart` (its partitions: `other`)"),
            "{err}"
        );
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert_no_loop_device(&gpt);
        c.assert_clean();
    }
}
