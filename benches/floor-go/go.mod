module credbroker/benches/floor-go

go 1.19
