"""One module per subcommand; each defines `main` (installed as localai.commands)."""
