from lens.cli import main

main()
