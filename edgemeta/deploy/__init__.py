"""`edgemeta deploy | rollback | status`: bundles to boards over SSH, verified, switched atomically, reversible."""

from edgemeta.deploy.actions import HostResult, Log, deploy, rollback, status
from edgemeta.deploy.cli import add_arguments, format_results, main, run_from_args
from edgemeta.deploy.ssh import ENV_SSH_OPTIONS, UPLOAD_CHUNK, Board, DeployError, SSHOptions, Target, script
from edgemeta.deploy.state import HEADER_PROBE_BYTES, PENDING_STORE, SAVED_STORE, STORE_FILE, SUMS_FILE, BoardState

__all__ = [
    "Board", "BoardState", "DeployError", "ENV_SSH_OPTIONS", "HEADER_PROBE_BYTES", "HostResult", "Log", "PENDING_STORE",
    "SAVED_STORE", "SSHOptions", "STORE_FILE", "SUMS_FILE", "Target", "UPLOAD_CHUNK", "add_arguments", "deploy",
    "format_results", "main", "rollback", "run_from_args", "script", "status",
]
