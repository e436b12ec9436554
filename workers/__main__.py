from workers.serving.main import main

main()
