from wallaroo.cli import main

main()
