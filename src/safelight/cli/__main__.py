from safelight.cli import main

main()
