#!/usr/bin/env python3
"""A layer-4 (TCP) balancer in front of the predictors, standing in for a Kubernetes ClusterIP
Service (kube-proxy) or a cloud network load balancer: each new TCP connection goes to the next
replica that NAME resolves to (resolved again per connection), and stays there for its life
(an HTTP/2 connection, and every gRPC call on it, is pinned to one replica). Runs until stopped.

    python l4.py [--listen 0.0.0.0:50051] [--backend predictor:50051]
"""
import argparse
import asyncio
import itertools
import socket


async def pipe(reader, writer):
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        try:
            writer.close()
        except OSError:
            pass


async def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--listen", default="0.0.0.0:50051")
    p.add_argument("--backend", default="predictor:50051")
    args = p.parse_args()
    name, port = args.backend.rsplit(":", 1)
    turn = itertools.count()
    loop = asyncio.get_running_loop()

    async def accept(client_reader, client_writer):
        try:
            n = -1
            infos = await loop.getaddrinfo(name, int(port), family=socket.AF_INET, type=socket.SOCK_STREAM)
            ips = sorted({info[4][0] for info in infos})
            n = next(turn)
            ip = ips[n % len(ips)]
            backend_reader, backend_writer = await asyncio.open_connection(ip, int(port))
        except OSError as e:
            print(f"connection {n}: no backend ({e})", flush=True)
            client_writer.close()
            return
        print(f"connection {n} → {ip} (of {len(ips)})", flush=True)
        await asyncio.gather(pipe(client_reader, backend_writer), pipe(backend_reader, client_writer))

    host, listen_port = args.listen.rsplit(":", 1)
    server = await asyncio.start_server(accept, host, int(listen_port))
    print(f"L4 balancer on {args.listen} → {args.backend} (per connection, round robin)", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
