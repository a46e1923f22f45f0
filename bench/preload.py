#!/usr/bin/env python3
"""Creates COUNT copies of a FHIR resource through the gateway (CONCURRENCY keep-alive
connections) and writes the paths of the new resources (/fhir/Type/id), one per line.

usage: preload.py BASE_URL RESOURCE_TYPE BODY_FILE COUNT OUT_FILE [CONCURRENCY]
Sends `Authorization: Bearer $BENCH_TOKEN` when set. $BASE_PATH is the FHIR base's path on the
server (default /fhir; "" for a server whose base is its root, bench/vs_hfs.sh). Fails (exit 1) on any answer other than 201
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
    base_path = os.environ.get("BASE_PATH", "/fhir")
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
            connection.request("POST", f"{base_path}/{resource_type}", body=body, headers=headers)
            response = connection.getresponse()
            response.read()
            location = response.getheader("Location", "")
            parts = urllib.parse.urlsplit(location).path.split("/")
            with lock:
                # .../fhir/Type/id/_history/1 (or .../Type/id) -> /fhir/Type/id
                end = parts.index("_history") if "_history" in parts else len(parts)
                if response.status != 201 or end < 2 or parts[end - 2] != resource_type:
                    failures.append(f"{response.status} Location={location!r}")
                    break
                paths.append(f"{base_path}/{parts[end - 2]}/{parts[end - 1]}")
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
