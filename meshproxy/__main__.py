from meshproxy.cli import main

main()
