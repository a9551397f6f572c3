"""kdcli: knowledge distillation from the command line, with a content-addressed artifact store."""

__version__ = "0.1.0"
