from kdcli.cli import main

main()
