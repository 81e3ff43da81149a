"""A private OpenSSH server on loopback for the deploy tests: installed with apt when missing (as CI on a
fresh machine would), started as a child process with its own host key, config and authorized key."""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from tests.harness import apt_install, free_port

SSHD = "/usr/sbin/sshd"  # sshd refuses to start unless run by its absolute path (it re-executes itself)


def ensure_sshd() -> str | None:
    """Installs openssh-server when sshd is missing; returns None when it is there, else why it could not be."""
    return apt_install(("openssh-server",), (SSHD,))


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "edgemeta-test", "-f", str(path)],
                   check=True, capture_output=True, timeout=60)


@dataclass
class SSHServer:
    """A running sshd; `url(path)` is a deploy target on it, `client_config` the client's `-F` file."""

    directory: Path
    port: int
    user: str
    client_config: Path
    process: subprocess.Popen

    def url(self, path: str | os.PathLike) -> str:
        return f"ssh://{self.user}@127.0.0.1:{self.port}{os.fspath(path)}"

    def ssh(self, command: str, timeout: float = 60) -> subprocess.CompletedProcess:
        """Runs `command` on the server with the test client's configuration."""
        return subprocess.run(["ssh", "-F", str(self.client_config), "-p", str(self.port), "-l", self.user,
                               "127.0.0.1", command], capture_output=True, text=True, timeout=timeout)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def start_sshd(directory: Path, attempts: int = 3) -> SSHServer:
    """Starts sshd on a free loopback port; logs go to `directory/sshd.log`."""
    directory.mkdir(parents=True, exist_ok=True)
    host_key, client_key = directory / "host_key", directory / "client_key"
    _keygen(host_key)
    _keygen(client_key)
    authorized = directory / "authorized_keys"
    authorized.write_text(client_key.with_suffix(".pub").read_text())
    try:
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # privilege separation directory (root's sshd)
    except OSError:
        pass  # not root: sshd then runs unprivileged and needs none
    user = os.environ.get("USER") or subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip()
    last_error = ""
    for _ in range(attempts):
        port = free_port()
        config = directory / "sshd_config"
        config.write_text(
            f"ListenAddress 127.0.0.1\nPort {port}\nHostKey {host_key}\nPidFile {directory / 'sshd.pid'}\n"
            f"AuthorizedKeysFile {authorized}\nPubkeyAuthentication yes\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\n"
            "LogLevel VERBOSE\nMaxStartups 50\nMaxSessions 50\n"
            # bash sources ~/.bashrc for ssh commands unless SHLVL says it is nested: the account's
            # interactive setup (here pyenv, 0.4 s per command) is not what these tests are about.
            "SetEnv SHLVL=1\n")
        known_hosts = directory / "known_hosts"
        known_hosts.write_text(f"[127.0.0.1]:{port} {host_key.with_suffix('.pub').read_text().split(' edgemeta')[0]}\n")
        client_config = directory / "ssh_config"
        client_config.write_text(
            f"Host *\n  IdentityFile {client_key}\n  IdentitiesOnly yes\n  UserKnownHostsFile {known_hosts}\n"
            "  GlobalKnownHostsFile /dev/null\n  StrictHostKeyChecking yes\n  BatchMode yes\n  LogLevel ERROR\n")
        log = open(directory / "sshd.log", "ab")
        process = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdout=log, stderr=log,
                                   stdin=subprocess.DEVNULL)
        log.close()
        server = SSHServer(directory, port, user, client_config, process)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and process.poll() is None:
            result = server.ssh("echo ready", timeout=15)
            if result.returncode == 0 and result.stdout.strip() == "ready":
                return server
            last_error = result.stderr
            time.sleep(0.2)
        server.stop()
        last_error = (directory / "sshd.log").read_text(errors="replace")[-1000:] + last_error
    raise RuntimeError(f"sshd did not start on loopback after {attempts} attempts: {last_error}")
