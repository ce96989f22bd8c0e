"""jit-bastion: just-in-time SSH access for Proxmox VE."""

__version__ = "0.1.0"
