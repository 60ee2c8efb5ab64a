"""The version of jupyter_exec_client."""

__version__ = "0.1.0"
