// A Go HTTP server as a handover worker (tests/recipes.rs, README "Recipes").
//
// It serves on the socket systemd or handover passes as fd 3 (LISTEN_FDS) and answers
// `/` with "hello from pid N", `/slow?ms=N` after N ms and a POST with its own body, each
// with an X-Worker-Pid header.
//
// On SIGTERM it drains without failing a keep-alive request. http.Server.Shutdown alone
// does not: it closes idle keep-alive connections at once (so does
// SetKeepAlivesEnabled(false)), and a client that sends on one at that moment gets a
// reset. So first: stop accepting (close the listener), answer the next request on every
// connection with `Connection: close`, and close a connection only once it has been
// idle for a second; then Shutdown, which waits for what is still in flight.
// GOAPP_PLAIN_SHUTDOWN=1 skips the drain and calls Shutdown at once: the shutdown most
// Go servers have (tests/recipes.rs runs it too).
package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"syscall"
	"time"
)

const idleGrace = time.Second

type tracker struct {
	mu       sync.Mutex
	draining bool
	// Connections and when each last became idle (zero while a request is active).
	conns map[net.Conn]time.Time
}

func (t *tracker) state(c net.Conn, s http.ConnState) {
	t.mu.Lock()
	defer t.mu.Unlock()
	switch s {
	case http.StateNew, http.StateActive:
		t.conns[c] = time.Time{}
	case http.StateIdle:
		t.conns[c] = time.Now()
	case http.StateHijacked, http.StateClosed:
		delete(t.conns, c)
	}
}

// closeIdle closes connections idle for longer than idleGrace; reports how many are left.
func (t *tracker) closeIdle() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	for c, since := range t.conns {
		if !since.IsZero() && time.Since(since) > idleGrace {
			c.Close()
			delete(t.conns, c)
		}
	}
	return len(t.conns)
}

func (t *tracker) isDraining() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.draining
}

func main() {
	if os.Getenv("LISTEN_FDS") == "" {
		fmt.Fprintln(os.Stderr, "goapp: no LISTEN_FDS: run me under handover or systemd")
		os.Exit(2)
	}
	ln, err := net.FileListener(os.NewFile(3, "listener"))
	if err != nil {
		fmt.Fprintln(os.Stderr, "goapp: fd 3:", err)
		os.Exit(2)
	}
	pid := os.Getpid()
	t := &tracker{conns: map[net.Conn]time.Time{}}
	mux := http.NewServeMux()
	answer := func(w http.ResponseWriter, body string) {
		w.Header().Set("X-Worker-Pid", strconv.Itoa(pid))
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		if t.isDraining() {
			w.Header().Set("Connection", "close")
		}
		fmt.Fprint(w, body)
	}
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost {
			body, err := io.ReadAll(r.Body)
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			answer(w, string(body))
			return
		}
		answer(w, fmt.Sprintf("hello from pid %d\n", pid))
	})
	mux.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) {
		ms, _ := strconv.Atoi(r.URL.Query().Get("ms"))
		time.Sleep(time.Duration(ms) * time.Millisecond)
		answer(w, fmt.Sprintf("slept %d ms in pid %d\n", ms, pid))
	})
	srv := &http.Server{Handler: mux, ConnState: t.state}

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	done := make(chan struct{})
	go func() {
		<-stop
		if os.Getenv("GOAPP_PLAIN_SHUTDOWN") != "1" {
			t.mu.Lock()
			t.draining = true
			t.mu.Unlock()
			ln.Close() // stop accepting; Serve returns
			for t.closeIdle() > 0 {
				time.Sleep(50 * time.Millisecond)
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		close(done)
	}()
	err = srv.Serve(ln)
	if err != http.ErrServerClosed && !t.isDraining() {
		fmt.Fprintln(os.Stderr, "goapp:", err)
		os.Exit(1)
	}
	<-done
}
