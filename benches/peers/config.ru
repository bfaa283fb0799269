# A Rack app for Puma: the routes of tests/recipes/app.py (`/`, `/slow?ms=N`, a POST
# echoed), each answer naming its process in an X-Worker-Pid header.
# Run: puma -w 2 --bind tcp://127.0.0.1:PORT config.ru; under handover the --bind must
# match the socket handed in as fd 3 (Puma 5.6 takes an inherited LISTEN_FDS socket
# only for a --bind with its address, and binds 0.0.0.0:9292 otherwise).
run lambda { |env|
  pid = Process.pid
  if env["REQUEST_METHOD"] == "POST"
    body = env["rack.input"].read
  elsif env["PATH_INFO"] == "/slow"
    ms = env["QUERY_STRING"][/(?:^|&)ms=(\d+)/, 1].to_i
    sleep(ms / 1000.0)
    body = "slept #{ms} ms in pid #{pid}\n"
  else
    body = "hello from pid #{pid}\n"
  end
  [200, {"content-type" => "text/plain", "content-length" => body.bytesize.to_s,
         "x-worker-pid" => pid.to_s}, [body]]
}
