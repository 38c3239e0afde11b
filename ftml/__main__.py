from ftml.cli import main

main()
