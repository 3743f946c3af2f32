from kaggle_kit.cli import app

app(prog_name="kit")
