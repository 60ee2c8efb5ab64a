"""The version of jupyter_exec_ext."""

__version__ = "0.1.0"
