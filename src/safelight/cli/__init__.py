def main() -> None:  # replaced below
    raise SystemExit("cli not built yet")
