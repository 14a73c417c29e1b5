// The Go floor: a net/http server answering every request with a fixed response of the same
// status, headers and body size as the broker's (the shape credbroker-bench's own floor takes).
// It is the ceiling of every Go credential sidecar (EKS Pod Identity Agent, the Azure workload
// identity proxy, gke-metadata-server): none of them can serve faster than net/http serving a
// constant. Only the standard library; GOMAXPROCS is set by the caller to match the pinning.
//
//	floor-go -shape '{"status":200,"headers":[["content-type","application/json"]],"body_len":1234}' -addr-file F
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"strconv"
	"time"
)

type shape struct {
	Status  int         `json:"status"`
	Headers [][2]string `json:"headers"`
	BodyLen int         `json:"body_len"`
}

func main() {
	shapeJSON := flag.String("shape", "", "the response shape, as JSON")
	addrFile := flag.String("addr-file", "", "where to write the listening address")
	flag.Parse()
	var s shape
	if err := json.Unmarshal([]byte(*shapeJSON), &s); err != nil {
		log.Fatalf("-shape: %v", err)
	}
	body := make([]byte, s.BodyLen)
	for i := range body {
		body[i] = 'x'
	}
	length := strconv.Itoa(len(body))
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		for _, kv := range s.Headers {
			h[http.CanonicalHeaderKey(kv[0])] = []string{kv[1]}
		}
		h["Content-Length"] = []string{length}
		w.WriteHeader(s.Status)
		w.Write(body)
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	// The broker's listener limits: 10 s for a request's headers and for an idle connection.
	srv := &http.Server{
		Handler:           handler,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       10 * time.Second,
	}
	if err := os.WriteFile(*addrFile, []byte(fmt.Sprint(ln.Addr())), 0o644); err != nil {
		log.Fatal(err)
	}
	log.Fatal(srv.Serve(ln))
}
