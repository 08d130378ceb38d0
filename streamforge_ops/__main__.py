from streamforge_ops.cli import run

run()
