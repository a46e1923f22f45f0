#!/usr/bin/env python3
"""Creates COUNT copies of a FHIR resource through the gateway (CONCURRENCY keep-alive
connections) and writes the paths of the new resources (/fhir/Type/id), one per line.

usage: preload.py BASE_URL RESOURCE_TYPE BODY_FILE COUNT OUT_FILE [CONCURRENCY]
Sends `Authorization: Bearer $BENCH_TOKEN` when set. Fails (exit 1) on any answer other than 201
with a Location header. Standard library only.
"""
import http.client
import os
import sys
import threading
import urllib.parse


def main() -> int:
    base_url, resource_type, body_file, count, out_file = sys.argv[1:6]
    concurrency = int(sys.argv[6]) if len(sys.argv) > 6 else 8
    count = int(count)
    url = urllib.parse.urlsplit(base_url)
    with open(body_file, "rb") as file:
        body = file.read()
    headers = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json", "Prefer": "return=minimal"}
    if os.environ.get("BENCH_TOKEN"):
        headers["Authorization"] = f"Bearer {os.environ['BENCH_TOKEN']}"
    paths, failures, lock = [], [], threading.Lock()
    remaining = iter(range(count))

    def worker() -> None:
        connection = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
        while True:
            with lock:
                if failures or next(remaining, None) is None:
                    break
            connection.request("POST", f"/fhir/{resource_type}", body=body, headers=headers)
            response = connection.getresponse()
            response.read()
            location = response.getheader("Location", "")
            parts = urllib.parse.urlsplit(location).path.split("/")
            with lock:
                if response.status != 201 or "_history" not in parts:
                    failures.append(f"{response.status} Location={location!r}")
                    break
                # .../fhir/Type/id/_history/1 -> /fhir/Type/id
                index = parts.index("_history")
                paths.append(f"/fhir/{parts[index - 2]}/{parts[index - 1]}")
        connection.close()

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures or len(paths) != count:
        print(f"preload {resource_type}: failed after {len(paths)} creates: {failures[:3]}", file=sys.stderr)
        return 1
    with open(out_file, "w") as file:
        file.write("\n".join(paths) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
