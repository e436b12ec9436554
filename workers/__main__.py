from workers.serving.worker import main

main()
