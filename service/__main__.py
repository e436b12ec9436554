from service.server import run

run()
